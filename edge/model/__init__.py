"""The model-artifact contract, shared by train, convert and the device: the card, the ``.tflite`` file
that carries it, the one image preparation, the LiteRT engine and the op audit. No TensorFlow."""
