"""The daemon that runs on the Pi: configuration, frame sources, the pipeline, and the parts that turn
classified frames into results, events, command replies and stats."""
