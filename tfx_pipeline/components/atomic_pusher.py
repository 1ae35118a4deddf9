"""TFX's Pusher, but a version appears under the serving base only once complete.

TFX's filesystem Pusher copies the SavedModel straight into
``<base>/<version>/`` (``saved_model.pb`` last), so a server polling the base
sees a half-written version, and a killed push leaves one behind. This executor
copies into a temporary sibling ``<base>/.tmp-<version>-<pid>`` (a name no model
server treats as a version), checks the copy with the server's completeness rule
(serving/model_server/version_files.py) and renames it into place: the version
appears whole or not at all. Blessing checks, versioning (UNIX timestamp), the
skip when the version directory exists, and the PushedModel artifact and its
``pushed_destination`` / ``pushed_version`` properties are TFX's.

A remote base (``gs://``, ``s3://``) has no atomic directory rename; there the
push falls back to TFX's in-place copy and the server's completeness check is
what keeps a partial copy from being served.
"""

from __future__ import annotations

import os
import shutil
import time

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher
from tfx.components.pusher.component import Pusher
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from serving.model_server.version_files import incomplete_reason

TMP_PREFIX = ".tmp-"


def push_atomically(model_path: str, base_directory: str, version: str) -> str | None:
    """Copies a SavedModel to ``base_directory/version`` through a temporary sibling and a rename.

    Returns:
        The version directory, or None when it already existed (nothing copied).

    Raises:
        RuntimeError: the source SavedModel is incomplete (nothing is left behind).
    """
    serving_path = os.path.join(base_directory, version)
    if os.path.exists(serving_path):
        return None
    os.makedirs(base_directory, exist_ok=True)
    tmp = os.path.join(base_directory, f"{TMP_PREFIX}{version}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a previous attempt of this very process
    try:
        shutil.copytree(model_path, tmp)
        reason = incomplete_reason(tmp)
        if reason is not None:
            raise RuntimeError(f"the model at {model_path} is incomplete ({reason}); not pushed")
        os.rename(tmp, serving_path)  # atomic on one filesystem; fails if serving_path appeared meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return serving_path


class AtomicPushExecutor(tfx_pusher.Executor):
    """tfx.components.Pusher's executor with push_atomically() for local filesystem destinations."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        push_destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], push_destination)
        fs_config = push_destination.filesystem
        if push_destination.WhichOneof("destination") != "filesystem" or "://" in fs_config.base_directory:
            return super().Do(input_dict, output_dict, exec_properties)
        if fs_config.versioning not in (pusher_pb2.Versioning.AUTO, pusher_pb2.Versioning.UNIX_TIMESTAMP):
            raise NotImplementedError(f"Invalid Versioning {fs_config.versioning}")
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push: types.Artifact = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)
        version = str(int(time.time()))
        serving_path = os.path.join(fs_config.base_directory, version)
        if push_atomically(model_path, fs_config.base_directory, version) is None:
            logging.info("Destination directory %s already exists, skipping current push.", serving_path)
        else:
            logging.info("Model written to serving path %s (temporary sibling, then rename).", serving_path)
        io_utils.copy_dir(model_path, model_push.uri)  # TFX's archive copy (not under the serving base)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)


class AtomicPusher(Pusher):
    """tfx.components.Pusher whose filesystem pushes rename a complete copy into place."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPushExecutor)
