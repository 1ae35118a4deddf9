"""TFX's Pusher, but a version appears under the serving base only once complete.

TFX's filesystem Pusher copies the SavedModel straight into
``<base>/<version>/`` (``saved_model.pb`` last), so a server polling the base
sees a half-written version, and a killed push leaves one behind. This executor
copies into a temporary sibling ``<base>/.tmp-<version>-<pid>`` (a name no model
server treats as a version), checks the copy with the server's completeness rule
(serving/model_server/version_files.py) and moves it into place. Blessing checks,
versioning (UNIX timestamp), the skip when the version directory exists, and the
PushedModel artifact and its ``pushed_destination`` / ``pushed_version`` properties
are TFX's.

All file I/O goes through ``tf.io.gfile``, so the base may be a local directory or a URI
(``gs://``, ``s3://``, ``hdfs://``). How the copy is moved into place depends on which:

- Local base: one ``rename`` of the directory (POSIX ``rename(2)``, atomic within a
  filesystem): the version appears whole or not at all, to any reader.
- URI base: object stores have no directory rename (a "directory" is a name prefix;
  ``tf.io.gfile.rename`` of one is a copy and delete per object, in no set order, and
  ``ram://`` drops the children). They do guarantee that one object appears whole, at
  once, when its write or copy completes (GCS and S3 uploads and copies are atomic per
  object, and listings are strongly consistent). So each file is renamed on its own,
  ``saved_model.pb`` last: before it arrives the version directory lacks it, and a
  reader that applies the completeness rule (our model server, ``recsys rollback``)
  never takes a half-moved version for a version. A server without that rule (stock TF
  Serving) can notice the directory early and fail to load it until it is complete.
"""

from __future__ import annotations

import os
import time

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher
from tfx.components.pusher.component import Pusher
from tfx.dsl.components.base import executor_spec
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from serving.fileio import copy_tree, files_under, gfile, is_uri, remove_tree
from serving.model_server.version_files import incomplete_reason

TMP_PREFIX = ".tmp-"
# Moved last into a version directory on an object store: the file the completeness rule
# (and TF Serving's loader) looks for first.
_LAST = ("saved_model.pb", "saved_model.pbtxt")


def push_atomically(model_path: str, base_directory: str, version: str) -> str | None:
    """Copies a SavedModel to ``base_directory/version`` through a temporary sibling and a rename.

    Returns:
        The version directory, or None when it already existed (nothing copied).

    Raises:
        RuntimeError: the source SavedModel is incomplete (nothing is left behind).
    """
    serving_path = os.path.join(base_directory, version)
    if gfile.exists(serving_path):
        return None
    gfile.makedirs(base_directory)
    tmp = os.path.join(base_directory, f"{TMP_PREFIX}{version}-{os.getpid()}")
    remove_tree(tmp)  # a previous attempt of this very process
    try:
        copy_tree(model_path, tmp)
        reason = incomplete_reason(tmp)
        if reason is not None:
            raise RuntimeError(f"the model at {model_path} is incomplete ({reason}); not pushed")
        _move_into_place(tmp, serving_path)
    finally:
        remove_tree(tmp)
    return serving_path


def _move_into_place(tmp: str, serving_path: str) -> None:
    if not is_uri(serving_path):
        # rename(2): atomic on one filesystem; fails if serving_path appeared meanwhile.
        gfile.rename(tmp, serving_path, overwrite=False)
        return
    if gfile.exists(serving_path):
        raise FileExistsError(f"{serving_path} appeared while the push was being copied; not overwritten")
    files = sorted(files_under(tmp), key=lambda rel: rel in _LAST)  # stable: saved_model.pb last
    gfile.makedirs(serving_path)
    for rel in files:
        parent = os.path.dirname(rel)
        if parent:
            gfile.makedirs(os.path.join(serving_path, parent))
        gfile.rename(os.path.join(tmp, rel), os.path.join(serving_path, rel), overwrite=False)


class AtomicPushExecutor(tfx_pusher.Executor):
    """tfx.components.Pusher's executor with push_atomically() for filesystem destinations (local or URI)."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        push_destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], push_destination)
        fs_config = push_destination.filesystem
        if push_destination.WhichOneof("destination") != "filesystem":
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
        # TFX's archive copy (not under the serving base), as io_utils.copy_dir makes it.
        remove_tree(model_push.uri)
        copy_tree(model_path, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=serving_path, pushed_version=version)


class AtomicPusher(Pusher):
    """tfx.components.Pusher whose filesystem pushes move a complete copy into place."""

    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(AtomicPushExecutor)
