"""Writers of the export formats: the SavedModel (jax2tf), TFLite from it, and ONNX from the TFLite file.

The route is JAX -> jax2tf (native serialization: StableHLO inside an ``XlaCallModule`` op) -> SavedModel
-> TFLite converter (which legalises the StableHLO to TFLite builtin ops) -> tf2onnx's TFLite front end.
tf2onnx cannot read the SavedModel itself (it has no ``XlaCallModule`` support), and its TFLite front end
maps ``UNSORTED_SEGMENT_PROD`` wrongly for negative segment ids (TensorFlow drops those), which the TFLite
converter emits for reshapes with a symbolic batch size: ``_unsorted_segment_prod`` replaces that mapping.
Imported only by ``--mode=export`` (it imports TensorFlow and jax2tf).
"""

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from jax.experimental import jax2tf

from scenecls.export.serving import IMAGES_SIGNATURE, PATCHES_SIGNATURE, SIGNATURES, ServingFn


def _outputs(probabilities: tf.Tensor, classes: tf.Tensor) -> dict[str, tf.Tensor]:
    """The signatures' outputs: probabilities (n, k) and the class names tiled to (n, k), as
    tf.estimator's classification outputs do, so TF Serving's row format (one row per image) works."""
    names = tf.tile(classes[None], [tf.shape(probabilities)[0], 1])
    return {"probabilities": probabilities, "classes": names}


def write_saved_model(
    path: str, serve: ServingFn, variables: Any, image_size: int, classes: Sequence[str]
) -> None:
    """A SavedModel of ``serve`` with the variables as TF variables and two signatures.

    ``serving_default``: ``images`` uint8 (n, image_size, image_size, 3), RGB, any n.
    ``classify_patches``: ``patches`` uint8 (n, s, s, 3), any n and s, resized to image_size first by
    TensorFlow's antialiased bilinear resize (the algorithm of ``jax.image.resize``, which exact patch mode
    uses). Both return ``probabilities`` (n, k) float32 and ``classes`` (n, k) strings.
    """
    # Native serialization (StableHLO in an XlaCallModule op); the batch dimension stays symbolic. Lowered
    # for CPU whatever device this process has (a GPU's module would not run on CPU, TFLite or ONNX).
    converted = jax2tf.convert(
        serve,
        polymorphic_shapes=[None, "(b, ...)"],
        with_gradient=False,
        native_serialization_platforms=("cpu",),
    )
    module = tf.Module()
    module.params = tf.nest.map_structure(lambda a: tf.Variable(np.asarray(a), trainable=False), variables)
    module.class_names = tf.constant(list(classes))
    size = (image_size, image_size)

    def classify_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return _outputs(converted(module.params, images), module.class_names)

    def classify_patches(patches: tf.Tensor) -> dict[str, tf.Tensor]:
        images = tf.image.resize(patches, size, "bilinear", antialias=True)
        return _outputs(converted(module.params, images), module.class_names)

    module.classify_images = tf.function(
        classify_images,
        input_signature=[tf.TensorSpec([None, *size, 3], tf.uint8, name=SIGNATURES[IMAGES_SIGNATURE])],
        autograph=False,
    )
    module.classify_patches = tf.function(
        classify_patches,
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=SIGNATURES[PATCHES_SIGNATURE])],
        autograph=False,
    )
    signatures = {IMAGES_SIGNATURE: module.classify_images, PATCHES_SIGNATURE: module.classify_patches}
    tf.saved_model.save(module, path, signatures=signatures)


def write_tflite(saved_model: str, path: str, quantize: bool = False) -> None:
    """TFLite of the SavedModel's image signature (float32, or dynamic-range int8 weights if ``quantize``)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model, signature_keys=[IMAGES_SIGNATURE])
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative data: dynamic range
    with open(path, "wb") as f:
        f.write(converter.convert())


def tflite_interpreter(path: str) -> tf.lite.Interpreter:
    """TensorFlow's TFLite interpreter for ``path``, without its deprecation notice (ai_edge_litert's
    interpreter, its successor, has the same API)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tf.lite.Interpreter(model_path=path)


def write_onnx(tflite: str, path: str, opset: int) -> None:
    """ONNX of a TFLite file written by ``write_tflite``, with its signature's names (``images`` in;
    ``probabilities``, ``classes`` out) and a symbolic batch size."""
    import tf2onnx

    handlers = {"UnsortedSegmentProd": (_unsorted_segment_prod, [])}
    model, _ = tf2onnx.convert.from_tflite(tflite, opset=opset, custom_op_handlers=handlers)
    runner = tflite_interpreter(tflite).get_signature_runner(IMAGES_SIGNATURE)
    details = {**runner.get_input_details(), **runner.get_output_details()}
    _rename(model.graph, {d["name"]: name for name, d in details.items()})
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


def _unsorted_segment_prod(ctx: Any, node: Any, name: str, args: list) -> None:
    """UnsortedSegmentProd(data (n,), ids (n,), num_segments) for ONNX: segment s is the product of the
    data whose id is s; ids outside [0, num_segments) are dropped, as in TensorFlow. (tf2onnx handler)"""
    from tf2onnx import utils

    data, ids, _ = node.input
    count = int(node.inputs[2].get_tensor_value())
    axis0 = ctx.make_const(utils.make_name("axis0"), np.array([0], np.int64)).output[0]
    id_type = utils.map_onnx_to_numpy_type(ctx.get_dtype(ids))
    segments = ctx.make_const(utils.make_name("segments"), np.arange(count, dtype=id_type)[:, None]).output[0]
    mask = ctx.make_node("Equal", [ctx.make_node("Unsqueeze", [ids, axis0]).output[0], segments]).output[0]
    one = np.array(1, utils.map_onnx_to_numpy_type(ctx.get_dtype(data)))
    one = ctx.make_const(utils.make_name("one"), one).output[0]
    grid = ctx.make_node("Where", [mask, ctx.make_node("Unsqueeze", [data, axis0]).output[0], one]).output[0]
    node.type = "ReduceProd"
    node.set_attr("keepdims", 0)
    if ctx.opset >= 18:  # axes became an input
        ctx.replace_inputs(node, [grid, ctx.make_const(utils.make_name("axes"), np.array([1])).output[0]])
    else:
        ctx.replace_inputs(node, [grid])
        node.set_attr("axes", [1])


def _rename(graph: Any, names: dict[str, str]) -> None:
    """Renames tensors of an ONNX graph (inputs, outputs and every reference to them)."""
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
