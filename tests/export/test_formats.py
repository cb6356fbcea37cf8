"""Fast checks of the export's pieces: config fields, and the ONNX mapping scenecls supplies to tf2onnx."""

import numpy as np
import pytest

from scenecls import config as config_lib


@pytest.mark.parametrize(
    "field,value",
    [("onnx_opset", 12), ("onnx_opset", 22), ("verify_images", 0)],
)
def test_bad_export_fields_fail_validation_naming_the_field(tiny_config, field, value):
    tiny_config.export[field] = value
    with pytest.raises(ValueError, match=f"config.export.{field}="):
        config_lib.validate(tiny_config)


@pytest.mark.parametrize("opset", [17, 18])
def test_onnx_unsorted_segment_prod_drops_negative_ids_as_tensorflow_does(tmp_path, opset):
    """The TFLite converter emits UNSORTED_SEGMENT_PROD with id -1 for reshapes with a symbolic batch."""
    import onnxruntime
    import tensorflow as tf

    from scenecls.export import formats

    ids = tf.constant([0, 0, -1, 1, 0])
    module = tf.Module()
    module.fn = tf.function(
        lambda images: {"probabilities": tf.math.unsorted_segment_prod(images, ids, 2)},
        input_signature=[tf.TensorSpec([5], tf.float32, name="images")],
    )
    tf.saved_model.save(module, str(tmp_path / "saved_model"), signatures={"serving_default": module.fn})
    formats.write_tflite(str(tmp_path / "saved_model"), str(tmp_path / "model.tflite"))
    formats.write_onnx(str(tmp_path / "model.tflite"), str(tmp_path / "model.onnx"), opset)

    x = np.array([2.0, 3.0, 5.0, 7.0, 11.0], np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    (out,) = session.run(["probabilities"], {"images": x})
    np.testing.assert_allclose(out, [2.0 * 3.0 * 11.0, 7.0])  # 5 (id -1) belongs to no segment
