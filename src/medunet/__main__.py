"""`python -m medunet`: the command line, also as torchrun's module (`torchrun ... -m medunet train`)."""
import sys

from medunet.cli import main

sys.exit(main())
