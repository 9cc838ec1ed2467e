"""linewatch on the workstation: labeled photos in, an evaluated Keras CNN out.

Importing this package is cheap; TensorFlow is imported only by the modules that train.
"""
