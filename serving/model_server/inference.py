"""Classify, Regress and MultiInference, as far as TF Serving gets with our models.

TF Serving runs these only on classification/regression signatures: one
`inputs` tensor of serialized tf.Examples and `classes`/`scores` (classify) or
`outputs` (regress). Every signature our models export is a predict signature
with named feature inputs, so TF Serving answers INVALID_ARGUMENT for them, from
its signature checks (classifier.cc PreProcessClassification, regressor.cc
PreProcessRegression, multi_inference.cc, with `--enable_signature_method_name_check`
off, its default). Those checks are reproduced here with TF Serving's
messages, after the same model lookup, so a client sees what TF Serving says.

A signature that passes them (a real classification/regression signature) is
answered UNIMPLEMENTED: running tf.Example inputs is not implemented because no
model of this project exports one (listed in README.md's differences).
"""

from __future__ import annotations

import grpc
from google.protobuf import text_format
from tensorflow_serving.apis import model_pb2

from serving import names
from serving.model_server.errors import ServingError, invalid_argument

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
_INPUTS, _CLASSES, _SCORES, _OUTPUTS = "inputs", "classes", "scores", "outputs"


def _debug_string(signature_def) -> str:
    return text_format.MessageToString(signature_def)


def signature_def(loaded, signature_name: str, not_found_prefix: str = "No signature was found with the name: "):
    """The SignatureDef of a loaded version; INVALID_ARGUMENT (TF Serving's words) when absent."""
    name = signature_name or names.DEFAULT_SIGNATURE
    defs = loaded.signature_def_map.signature_def
    if name not in defs:
        raise invalid_argument(f"{not_found_prefix}{name}")
    return defs[name]


def check_classification(signature) -> None:
    """TF Serving's PreProcessClassification checks, in its order and words."""
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if _INPUTS not in signature.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {_debug_string(signature)}")
    if _CLASSES not in signature.outputs and _SCORES not in signature.outputs:
        raise invalid_argument(
            f'Expected classification signature outputs to contain at least one of "{_CLASSES}" or '
            f'"{_SCORES}". Signature was: {_debug_string(signature)}')


def check_regression(signature) -> None:
    """TF Serving's PreProcessRegression checks, in its order and words."""
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if _INPUTS not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {_debug_string(signature)}")
    if _OUTPUTS not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {_debug_string(signature)}")


def _unimplemented(api: str) -> ServingError:
    return ServingError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{api} on a {api.lower()} signature is not implemented by this model server (no model of this "
        "project exports one); call Predict")


def classify(loaded, signature_name: str) -> None:
    """Classify on `loaded`: TF Serving's INVALID_ARGUMENT for predict signatures."""
    check_classification(signature_def(loaded, signature_name))
    raise _unimplemented("Classification")


def regress(loaded, signature_name: str) -> None:
    """Regress on `loaded`: TF Serving's INVALID_ARGUMENT for predict signatures."""
    check_regression(signature_def(loaded, signature_name))
    raise _unimplemented("Regression")


def multi_inference_model_spec(request):
    """The ModelSpec TF Serving looks the model up with: the first task's (empty without tasks)."""
    if request.tasks and request.tasks[0].HasField("model_spec"):
        return request.tasks[0].model_spec
    return model_pb2.ModelSpec()


def multi_inference(loaded, request) -> None:
    """TF Serving's TensorFlowMultiInferenceRunner::Infer checks over every task."""
    model_name = ""
    seen = set()
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif model_name != task.model_spec.name:
            raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
        name = task.model_spec.signature_name or names.DEFAULT_SIGNATURE
        if name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        signature = signature_def(loaded, name, "Requested signature not found in model graph: ")
        if task.method_name == CLASSIFY_METHOD:
            check_classification(signature)
        elif task.method_name == REGRESS_METHOD:
            check_regression(signature)
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
    raise _unimplemented("MultiInference")
