"""linewatch on the workstation: a trained run folder in, a self-describing int8 ``.tflite`` out."""
