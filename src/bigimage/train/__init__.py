"""Task 3: train an image classifier on the TFRecords under a tf.distribute strategy.

Legacy tf-keras only (Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy, keras-team/keras#20585).
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
