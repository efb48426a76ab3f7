"""Files in and out: checkpoints and their conversion, decoders to uint8 images, image grids,
schedule files, importers of other tools' schedules, and JSON written whole (`atomic`)."""
