"""`python -m medunet`: the same command as `medunet` (torchrun launches modules this way)."""
from medunet.cli import main

raise SystemExit(main())
