"""The compiled Kubeflow v2 spec: no file of the compiling machine, only image files the image
has, and two chained tasks run through TFX's Kubeflow V2 container entrypoint."""

import importlib
import json
import re
import shlex
from pathlib import Path

import pytest
import tomllib

from tests.support.dockerfile import copies, parse_dockerfile, stages
from tests.support.pipeline_configs import implicit_demo
from tfx_pipeline.config import ConfigError, load_config
from tfx_pipeline.kubeflow_paths import IMAGE_WORKDIR, cluster_config

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "pipeline.Dockerfile"
BUCKET = "gs://example-bucket/recsys"
DATAFLOW = ["--runner=DataflowRunner", "--project=example-project", "--region=europe-west4",
            f"--temp_location={BUCKET}/tmp"]
OUR_PACKAGES = ("tfx_pipeline", "trainer", "serving")


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _param(spec: dict, task: str, name: str) -> str:
    return spec["pipelineSpec"]["root"]["dag"]["tasks"][task]["inputs"]["parameters"][name][
        "runtimeValue"]["constantValue"]["stringValue"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The whole pipeline compiled from implicit_demo with its locations on a bucket and
    Dataflow Beam args from the config (kubeflow.beam_pipeline_args)."""
    from tfx_pipeline.kubeflow_runner import compile_pipeline

    tmp = tmp_path_factory.mktemp("kfp")
    cfg = implicit_demo(tmp, pipeline_root=f"{BUCKET}/root", serving_base_path="",
                        data={"events": {"path": f"{BUCKET}/data/events.csv"}},
                        kubeflow={"beam_pipeline_args": DATAFLOW})
    out = compile_pipeline(cfg, tmp / "pipeline.json", image="example/recsys:test")
    return json.loads(out.read_text()), tmp_path_factory.getbasetemp()


def test_compiled_spec_names_no_file_of_the_compiling_machine(compiled):
    spec, tmp = compiled
    host = sorted({s[:200] for s in _strings(spec) if str(REPO) in s or str(tmp) in s})
    assert not host, f"the spec names files of the compiling machine ({REPO}, {tmp}): {host}"
    # Shared locations pass through untouched.
    assert spec["runtimeConfig"]["gcsOutputDirectory"] == f"{BUCKET}/root/artifacts"
    assert json.loads(_param(spec, "ExampleBuilder", "config_json"))["data"]["events"]["path"] == \
        f"{BUCKET}/data/events.csv"
    assert _param(spec, "DataGate", "baseline_dir") == f"{BUCKET}/root/drift_baseline"
    assert json.loads(_param(spec, "Push_retrieval", "push_destination"))["filesystem"]["base_directory"] == \
        f"{BUCKET}/root/serving/retrieval"
    # The curated schema is the image's copy.
    assert _param(spec, "ImportSchemaGen", "schema_file") == f"{IMAGE_WORKDIR}/schemas/implicit_demo/schema.pbtxt"
    # Beam: the config's distributed-runner args, never the local runner's in-memory DirectRunner.
    assert json.loads(_param(spec, "ExampleBuilder", "beam_pipeline_args_json")) == DATAFLOW
    containers = {label: e["container"] for label, e in spec["pipelineSpec"]["deploymentSpec"]["executors"].items()
                  if "container" in e}  # not the resolvers and the schema importer
    assert {"ExampleBuilder_executor", "StatisticsGen_executor", "Transform_executor"} <= set(containers)
    for label, container in containers.items():
        args = container["args"]
        assert args[-len(DATAFLOW):] == DATAFLOW, (label, args)
        assert not [a for a in args if a.startswith("--direct_")], (label, args)


@pytest.mark.parametrize("over,message", [
    ({}, "pipeline_root is not set"),
    ({"pipeline_root": "runs/x"}, "pipeline_root 'runs/x' is relative"),
    ({"pipeline_root": str(REPO / "runs" / "x")}, "is inside this checkout"),
    ({"pipeline_root": f"{BUCKET}/root", "serving_base_path": "runs/serving"}, "serving_base_path 'runs/serving'"),
    ({"pipeline_root": f"{BUCKET}/root"}, "data.events.path 'data/implicit_demo/events.csv' is relative"),
    ({"pipeline_root": f"{BUCKET}/root", "data": {"events": {"path": f"{BUCKET}/e.csv"}}, "schema_dir": "tests"},
     "not in the pipeline image"),
])
def test_compile_refuses_a_location_the_pods_cannot_reach(over, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        cluster_config(load_config("configs/implicit_demo.yaml", over))


def test_cluster_config_keeps_shared_locations_and_drops_the_config_files_host_path():
    cfg = cluster_config(load_config("configs/implicit_demo.yaml", {
        "pipeline_root": "/mnt/shared/root", "data": {"events": {"path": "/mnt/shared/events.csv"}}}))
    assert (cfg.pipeline_root, cfg.serving_base_path) == ("/mnt/shared/root", "/mnt/shared/root/serving")
    assert cfg.data.events.path == "/mnt/shared/events.csv"
    assert cfg.source_path == "configs/implicit_demo.yaml"


def test_compile_command_exits_2_naming_the_key(tmp_path, capsys):
    from tfx_pipeline.cli import main

    assert main(["pipeline", "compile", "--config", "configs/implicit_demo.yaml", "-o", str(tmp_path / "p.json"),
                 "--set", f"pipeline_root={BUCKET}/root"]) == 2
    err = capsys.readouterr().err
    assert "ConfigError" in err and "data.events.path" in err and "--set data.events.path=gs://" in err
    assert not (tmp_path / "p.json").exists()


# --------------------------------------------------------------------------- what the image holds

def _image_files(spec: dict) -> set[str]:
    return {m for s in _strings(spec) for m in re.findall(rf"{re.escape(IMAGE_WORKDIR)}/[\w./-]+", s)}


def _module_refs(spec: dict) -> set[str]:
    """Import paths of this project's code anywhere in the spec, and every container's
    executor class and ``python -m`` module."""
    pattern = rf"(?<![\w.])(?:{'|'.join(OUR_PACKAGES)})(?:\.[A-Za-z_]\w*)+"
    ours = {m for s in _strings(spec) for m in re.findall(pattern, s)}
    for executor in spec["pipelineSpec"]["deploymentSpec"]["executors"].values():
        if "container" in executor:
            argv = [*executor["container"]["command"], *executor["container"]["args"]]
            ours |= {argv[k + 1] for k, a in enumerate(argv[:-1]) if a in ("-m", "--executor_class_path")}
    return ours


def _resolve(ref: str):
    """(module, object) for an import path ``package.module[.attr...]``: the longest importable
    module prefix, then attributes."""
    parts, module, cut = ref.split("."), None, 0
    while cut < len(parts):
        try:
            module = importlib.import_module(".".join(parts[:cut + 1]))
        except ImportError:
            break
        cut += 1
    assert module is not None, f"{ref}: no such module"
    obj = module
    for attr in parts[cut:]:
        obj = getattr(obj, attr)
    return module, obj


def test_every_file_and_module_the_spec_names_is_in_the_image(compiled):
    spec, _ = compiled
    build, runtime = stages(parse_dockerfile(DOCKERFILE.read_text()))
    ignore = (DOCKERFILE.parent / "pipeline.Dockerfile.dockerignore").read_text().splitlines()

    # Files: each in-image path lies under a COPY of the runtime stage, from a file of this checkout.
    files = _image_files(spec)
    assert f"{IMAGE_WORKDIR}/schemas/implicit_demo/schema.pbtxt" in files, files
    runtime_copies = [(src, dest) for src, dest, origin in copies(runtime) if origin is None]
    for path in sorted(files):
        found = [(src, dest) for src, dest in runtime_copies if path == dest or path.startswith(dest + "/")]
        assert found, f"{path}: no COPY in {DOCKERFILE.name}'s runtime stage puts it there ({runtime_copies})"
        src, dest = found[-1]
        source = REPO / src / Path(path).relative_to(dest)
        assert source.is_file(), f"{path}: copied from {source.relative_to(REPO)}, which is not in the checkout"
        assert f"!{src.strip('./').split('/')[0]}/" in ignore, f"{src}: excluded by the .dockerignore"

    # Modules: ours are copied into the build stage and installed; tfx comes from the lock.
    refs = _module_refs(spec)
    assert {"trainer.preprocessing.preprocessing_fn", "trainer.retrieval.train.run_fn",
            "tfx_pipeline.components.example_builder.ExampleBuilder_Executor"} <= refs, refs
    build_sources = {src.strip("./") for src, _, origin in copies(build) if origin is None}
    installs = [shlex.split(a) for i, a in build if i == "RUN" and "install" in a]
    assert any(cmd[-1] == "." for cmd in (c[:c.index("&&")] if "&&" in c else c for c in installs)), installs
    packaged = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for ref in sorted(refs):
        module, _ = _resolve(ref)
        top = ref.split(".")[0]
        if top == "tfx":
            continue  # tfx==1.16.0 from requirements.lock.txt (tests/deploy/test_dockerfiles.py)
        assert top in build_sources, f"{ref}: {top}/ is not copied into the build stage"
        assert f"{top}*" in packaged["include"], f"{ref}: pyproject.toml does not package {top}"
        assert Path(module.__file__).resolve().is_relative_to(REPO / top), (ref, module.__file__)


# --------------------------------------------------------------------------- two tasks, run

@pytest.mark.e2e
def test_example_builder_and_statistics_gen_run_through_the_kubeflow_v2_entrypoint(tmp_path):
    """The spec's first two tasks, chained the way the KFP launcher chains them (the producer's
    executor_output.json feeds the consumer's input artifact), each run by the spec's own
    container command in a working directory outside the checkout. Locations are local
    absolute paths (a volume the pods would mount), not gs://."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    from tests.support.kfp_launcher import run_task
    from tfx_pipeline.data.datasets import make_synthetic_implicit
    from tfx_pipeline.kubeflow_runner import compile_pipeline

    data, root, pod = tmp_path / "data", tmp_path / "root", tmp_path / "pod"
    make_synthetic_implicit(data, num_users=40, num_items=30, events_per_user=12)
    pod.mkdir()
    cfg = implicit_demo(tmp_path, pipeline_root=str(root), serving_base_path="",
                        data={"fetch": "none", "events": {"path": str(data / "events.csv")}})
    spec = json.loads(compile_pipeline(cfg, tmp_path / "pipeline.json", image="example/recsys:test",
                                       stage="data").read_text())
    pipeline_root = spec["runtimeConfig"]["gcsOutputDirectory"]
    outputs: dict = {}
    built = run_task(spec, "ExampleBuilder", pipeline_root, str(pod), outputs)
    (examples,) = built["artifacts"]["examples"]["artifacts"]
    splits = json.loads(examples["metadata"]["split_names"])
    assert set(splits) == {"train", "eval", "items", "users"}, examples
    counts = {s: sum(1 for _ in _records(Path(examples["uri"]) / f"Split-{s}")) for s in splits}

    stats_out = run_task(spec, "StatisticsGen", pipeline_root, str(pod), outputs)
    (stats,) = stats_out["artifacts"]["statistics"]["artifacts"]
    written = sorted(p.parent.name for p in Path(stats["uri"]).glob("Split-*/FeatureStats.pb"))
    assert written == ["Split-eval", "Split-train"]  # the side splits are excluded, as the spec says
    for split in ("train", "eval"):
        pb = statistics_pb2.DatasetFeatureStatisticsList.FromString(
            (Path(stats["uri"]) / f"Split-{split}" / "FeatureStats.pb").read_bytes())
        assert pb.datasets[0].num_examples == counts[split] > 0, split


def _records(split_dir: Path):
    import tensorflow as tf

    return tf.data.TFRecordDataset([str(p) for p in sorted(split_dir.glob("*.gz"))], compression_type="GZIP")
