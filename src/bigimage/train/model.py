"""The ``model=`` group: networks that take uint8 images (0..255) and return float32 class logits under
every ``train.precision`` policy; build them inside ``strategy.scope()``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hydra.utils import get_method

if TYPE_CHECKING:  # the typed schema; at run time a DictConfig of it
    from bigimage.config import Config


def small_cnn(model: Any, image_size: int, num_classes: int) -> Any:
    import tf_keras as keras

    layers = keras.layers
    width = int(model.width)
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    x = layers.Conv2D(max(8, width // 2), 5, strides=2, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(2 * width, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(2 * width, 3, padding="same", activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(float(model.dropout))(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def mobilenet_v2(model: Any, image_size: int, num_classes: int) -> Any:
    import tf_keras as keras

    layers = keras.layers
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0)(inputs)  # MobileNetV2 expects [-1, 1]
    base = keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3), include_top=False, weights=model.weights, pooling="avg"
    )
    x = base(x)
    x = layers.Dropout(float(model.dropout))(x)
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2")


def build_model(cfg: Config, num_classes: int) -> Any:
    return get_method(cfg.model._target_)(cfg.model, int(cfg.image_size), num_classes)


def compile_model(model: Any, cfg: Config) -> Any:
    import tf_keras as keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=float(cfg.train.learning_rate)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
