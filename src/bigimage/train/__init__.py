"""Task 3: train an image classifier on the TFRecords under a tf.distribute strategy.

Layout (after tensorflow/models' official/core): ``model`` builds the network, ``inputs`` the tf.data
pipelines (``build_inputs(cfg, plan, training, input_context)``), ``strategies`` picks the
strategy from ``strategy.name``, ``callbacks`` times epochs and logs them to MLflow from the chief,
``worker`` is one training process (callable with a TF_CONFIG from anywhere), ``launch`` starts and
watches the local worker processes, and ``task.run_train`` is what run.py calls.

tf.keras must be the legacy tf-keras (Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy,
keras-team/keras#20585): every module here imports ``tf_keras`` directly, and the variable below is
set before anything in this package imports TensorFlow.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
