"""linewatch on the device: frames in, int8 inference with LiteRT, results out over MQTT.

Nothing under ``linewatch.edge`` imports TensorFlow: the Raspberry Pi has LiteRT only.
The layers, lowest first (docs/architecture.md): ``errors``, ``files``, ``options``;
``model`` (the model-artifact contract, shared with train and convert); ``comms`` (MQTT);
``simulator``; ``device`` (the daemon); ``tools`` (operator commands); ``demo``; ``cli``.
"""

__version__ = "0.1.0"
