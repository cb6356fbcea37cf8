"""The export folder's README.txt: what each file is, how to call it, and how it was checked."""

from typing import Any

_SNIPPETS = """\
SavedModel (TensorFlow only):
    import numpy as np, tensorflow as tf
    from PIL import Image
    model = tf.saved_model.load("saved_model")
    image = np.asarray(Image.open("photo.jpg").convert("RGB").resize(({size}, {size}), Image.BILINEAR))
    out = model.signatures["serving_default"](images=tf.constant(image[None]))
    print(out["classes"][0, out["probabilities"][0].numpy().argmax()].numpy().decode())
    # Square patches of any size (resized inside to {size} px, as exact patch mode does):
    out = model.signatures["classify_patches"](patches=tf.constant(patches))  # uint8 (n, s, s, 3)

TFLite (tf.lite.Interpreter, or ai_edge_litert.interpreter.Interpreter with the same calls):
    import tensorflow as tf
    runner = tf.lite.Interpreter(model_path="model.tflite").get_signature_runner()
    out = runner(images=image[None])  # uint8 (n, {size}, {size}, 3), any n
    print(out["classes"][0, out["probabilities"][0].argmax()].decode())

ONNX (onnxruntime):
    import onnxruntime
    session = onnxruntime.InferenceSession("model.onnx")
    probabilities, classes = session.run(["probabilities", "classes"], {{"images": image[None]}})
    print(classes[0, probabilities[0].argmax()])
"""


def text(meta: dict[str, Any]) -> str:
    """README.txt for an export described by ``meta`` (see scenecls.export.run)."""
    size = meta["model"]["image_size"]
    verification = meta["verification"]
    lines = [
        f"scenecls {meta['scenecls_version']} export of {meta['source']['workdir']}",
        f"(checkpoint {meta['source']['checkpoint']}, {meta['model']['variant']} ResNet-50 + "
        f"{meta['model']['head']} head)",
        "",
        f"Classes ({len(meta['classes'])}): {', '.join(meta['classes'])}",
        f"Input: uint8 RGB images (n, {size}, {size}, 3), pixel values 0-255, any batch size n.",
        f"Preprocessing ({meta['preprocessing']['kind']}) and the softmax at the calibration temperature "
        f"{meta['preprocessing']['temperature']:.4g} are inside the model: feed plain pixels.",
        "Outputs: probabilities float32 (n, classes); classes, the class names per image (n, classes).",
        "",
        "Files: saved_model/ (TensorFlow SavedModel: signatures serving_default and classify_patches),",
        "model.tflite (float32), model_quantized.tflite (dynamic-range int8 weights, if asked for),",
        f"model.onnx (opset {meta['converter']['opset']}), meta.json (all of this as data, and a sha256 of "
        "every file).",
        "",
        _SNIPPETS.format(size=size),
        f"Verified against the JAX model on {verification['photos']}:",
    ]
    for name, r in verification["results"].items():
        lines.append(f"  {name}: max |dp| {r['max_abs_diff']:.1e}, top-1 agreement {r['top1_agreement']:.1%}")
    return "\n".join(lines) + "\n"
