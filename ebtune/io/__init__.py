"""Files in and out: checkpoints and their conversion, decoders to uint8 images, image grids,
schedule files, and importers of other tools' schedules."""
