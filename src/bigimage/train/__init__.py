"""Task 3: train an image classifier on the TFRecords under a tf.distribute strategy.

tf.keras must be the legacy tf-keras (Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy,
keras-team/keras#20585): every module here imports ``tf_keras``, and this is set before TensorFlow loads.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
