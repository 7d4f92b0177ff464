"""Reading and writing 2D images and masks."""
