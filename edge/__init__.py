"""linewatch on the device: frames in, int8 inference with LiteRT, results out over MQTT.

Nothing under ``edge`` imports TensorFlow: the Raspberry Pi has LiteRT only.
"""

__version__ = "0.1.0"
