"""The package's layout (issue 22): the medical toolkit lives in `modeling_icmoe.medical`, its old import paths
keep working for a release with a warning, the command points at the new place, and a checkpoint saved before the
move still loads and computes what it did, with the installed package and as remote code in a process without it."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoModelForMaskGeneration, SamModel, SamProcessor
from transformers.dynamic_module_utils import get_relative_import_files

from helpers import child_env, tiny_base_sam, tiny_sam_processor, trained_icmoe
from modeling_icmoe import (
    IcMoeSamModel,
    IcMoeSamSegmentationPipeline,
    load_icmoe_adapter,
    save_pretrained_with_pipeline,
)
from modeling_icmoe._moved import MOVED_MODULES
from remote_code import run_without_package

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "modeling_icmoe"
# The modules whose classes a checkpoint names (model, config, pipelines): their files and what they import are the
# remote code a save copies.
REMOTE_CODE_ROOTS = ("configuration_icmoe_sam", "modeling_icmoe_sam", "modeling_icmoe_semantic", "pipeline_icmoe_sam",
                     "pipeline_icmoe_semantic")
PRE_MOVE = Path(__file__).resolve().parent / "fixtures" / "pre_move_checkpoint"
# The recorded outputs were computed on one CPU with one thread; other processes and thread counts may sum in another
# order (differences of the order of 1e-7).
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(PRE_MOVE / "expected.safetensors")


def _check_outputs(model, expected: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        outputs = model(pixel_values=expected["pixel_values"], input_boxes=expected["input_boxes"])
    torch.testing.assert_close(outputs.pred_masks, expected["pred_masks"], **TOLERANCE)
    torch.testing.assert_close(outputs.iou_scores, expected["iou_scores"], **TOLERANCE)


def _package_modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its `__init__.py`)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that module `name` imports anywhere in its file: at module level, in functions (lazy
    imports count: they close a cycle when they run), in `if __name__ == "__main__":` blocks. `from PKG import sub`
    names the submodule, not the package's `__init__` (which is imported already, as a parent)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = {f"{target}.{alias.name}" for alias in node.names} & set(modules)
            found |= submodules
            if target in modules and len(submodules) < len(node.names):
                found.add(target)
    return found - {name}


def _import_graph() -> dict[str, set[str]]:
    modules = _package_modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each back edge of a depth-first search (none when the graph is acyclic)."""
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _closure(graph: dict[str, set[str]], roots) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


# ------------------------------------------------------------------------------------------------- the imports
@pytest.mark.parametrize("name", sorted(_package_modules()))
def test_every_module_imports(name):
    if name == "modeling_icmoe.medical.app":
        pytest.importorskip("gradio")
    assert importlib.import_module(name).__file__ == str(_package_modules()[name])


def test_the_import_graph_reads_what_the_files_import():
    graph = _import_graph()
    assert graph["modeling_icmoe.medical.volumes"] >= {
        "modeling_icmoe.imaging", "modeling_icmoe.pipeline_icmoe_semantic", "modeling_icmoe.medical.volume_grid",
        "modeling_icmoe.medical.prompts", "modeling_icmoe.medical.dicom", "modeling_icmoe.medical.propagation"}
    assert "modeling_icmoe.imaging" in graph["modeling_icmoe.pipeline_icmoe_sam"]  # `from . import imaging`
    assert "modeling_icmoe" not in graph["modeling_icmoe.pipeline_icmoe_sam"]
    assert graph["modeling_icmoe.cli"] == {"modeling_icmoe._moved", "modeling_icmoe.medical.cli"}  # the __main__ block
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_in_the_package():
    assert _cycles(_import_graph()) == []


def test_the_toolkit_shares_its_pieces_one_way():
    graph = _import_graph()
    medical = "modeling_icmoe.medical."
    # DICOM and volumes share the volume type through volume_grid, which imports neither.
    assert f"{medical}volumes" not in graph[f"{medical}dicom"]
    assert f"{medical}volume_grid" in graph[f"{medical}dicom"]
    assert not graph[f"{medical}volume_grid"] & {f"{medical}volumes", f"{medical}dicom"}
    # Propagation takes its prompts from prompts.py, not from volumes (which calls propagation).
    assert f"{medical}volumes" not in graph[f"{medical}propagation"]
    assert not graph[f"{medical}prompts"] & {f"{medical}volumes", f"{medical}propagation"}
    # The app's model loading is public, in checkpoint.py; the app does not import the command.
    assert f"{medical}cli" not in graph[f"{medical}annotation"]
    assert f"{medical}checkpoint" in graph[f"{medical}annotation"] & graph[f"{medical}cli"]


def test_the_toolkit_modules_import_only_those_listed_before_them():
    """The subpackage's docstring lists its modules in an order in which each imports only earlier ones."""
    import modeling_icmoe.medical as medical

    listed = [line.split()[0] for line in medical.__doc__.splitlines() if line.startswith("    ") and line.split()]
    modules = sorted(name.rpartition(".")[2] for name in _package_modules() if name.startswith(f"{medical.__name__}."))
    assert sorted(listed) == modules
    graph = _import_graph()
    for position, name in enumerate(listed):
        imported = {m.rpartition(".")[2] for m in graph[f"{medical.__name__}.{name}"] if m.startswith(medical.__name__)}
        assert imported <= set(listed[:position]), (name, imported - set(listed[:position]))


def test_only_the_shims_use_the_old_paths_and_the_model_never_imports_the_toolkit():
    graph = _import_graph()
    for name, imported in graph.items():
        if name not in MOVED_MODULES:
            assert not imported & set(MOVED_MODULES), name
        if not name.startswith("modeling_icmoe.medical") and name not in MOVED_MODULES:
            assert not [m for m in imported if m.startswith("modeling_icmoe.medical")], name
    for old in MOVED_MODULES:
        assert graph[old] <= {"modeling_icmoe._moved", MOVED_MODULES[old]}, old


@pytest.mark.slow  # a fresh interpreter
def test_importing_the_package_leaves_the_toolkit_out():
    code = ("import sys, modeling_icmoe; loaded = [m for m in sys.modules if m.startswith('modeling_icmoe.')]; "
            "print(sorted(loaded))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(), capture_output=True, text=True,
                            check=True, timeout=300)
    loaded = set(eval(result.stdout.strip()))  # noqa: S307 (our own printed list)
    assert loaded and not [m for m in loaded if m.startswith("modeling_icmoe.medical") or m in MOVED_MODULES]
    assert "modeling_icmoe._moved" not in loaded


# ------------------------------------------------------------------------------------------------- remote code
def test_remote_code_is_what_the_model_imports_and_no_toolkit():
    """What transformers copies beside a checkpoint (the files its `from .x import` lines name, recursively) is
    exactly what the model's and pipelines' modules import from the package: top-level files, single-dot imports, no
    medical module, no shim."""
    graph, modules = _import_graph(), _package_modules()
    for root in REMOTE_CODE_ROOTS:
        needed = _closure(graph, [f"modeling_icmoe.{root}"])
        copied = {Path(p).resolve() for p in get_relative_import_files(str(modules[f"modeling_icmoe.{root}"]))}
        assert copied == {modules[name].resolve() for name in needed - {f"modeling_icmoe.{root}"}}, root
        for name in needed:
            assert name.count(".") == 1 and not name.startswith(("modeling_icmoe.medical", "modeling_icmoe._")), name
            assert name not in MOVED_MODULES, name
            assert "from .." not in modules[name].read_text(encoding="utf-8"), name


@pytest.fixture(scope="module")
def fresh_checkpoints(tmp_path_factory, tiny_base_dir):
    """A prompted and a prompt-free model saved now, with their pipelines; what each computes on an image."""
    from semantic_fixtures import save_semantic_model

    folder = tmp_path_factory.mktemp("fresh")
    model, processor = trained_icmoe(tiny_base_sam()), tiny_sam_processor()
    save_pretrained_with_pipeline(model, processor, folder / "prompted")
    save_semantic_model(folder / "semantic", tiny_base_dir)
    pixel_values = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(11))
    boxes = torch.tensor([[[6.0, 8.0, 42.0, 50.0]]])
    semantic = AutoModel.from_pretrained(folder / "semantic").eval()
    with torch.no_grad():
        expected = {"pixel_values": pixel_values, "input_boxes": boxes,
                    "pred_masks": model(pixel_values=pixel_values, input_boxes=boxes).pred_masks,
                    "logits": semantic(pixel_values=pixel_values).logits}
    torch.save(expected, folder / "io.pt")
    return folder


def test_a_fresh_save_copies_only_the_models_files(fresh_checkpoints):
    graph = _import_graph()
    for kind, roots in (("prompted", ["modeling_icmoe_sam", "pipeline_icmoe_sam"]),
                        ("semantic", ["modeling_icmoe_semantic", "pipeline_icmoe_semantic"])):
        copied = {p.name for p in (fresh_checkpoints / kind).glob("*.py")}
        needed = _closure(graph, [f"modeling_icmoe.{root}" for root in roots])
        assert copied == {f"{name.rpartition('.')[2]}.py" for name in needed}, kind
        moved = {f"{old.rpartition('.')[2]}.py" for old in MOVED_MODULES}
        assert not copied & (moved | {"_moved.py", "volume_grid.py", "prompts.py", "checkpoint.py", "__init__.py"})


@pytest.mark.slow
def test_a_fresh_save_loads_as_remote_code_without_the_package(fresh_checkpoints, tmp_path):
    run_without_package(f"""
        import numpy as np
        import torch
        from transformers import AutoModel, pipeline

        folder = {str(fresh_checkpoints)!r}
        io = torch.load(folder + "/io.pt")
        prompted = AutoModel.from_pretrained(folder + "/prompted", trust_remote_code=True).eval()
        semantic = AutoModel.from_pretrained(folder + "/semantic", trust_remote_code=True).eval()
        for model in (prompted, semantic):
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():  # another process, another thread count: equal up to the order of sums
            masks = prompted(pixel_values=io["pixel_values"], input_boxes=io["input_boxes"]).pred_masks
            torch.testing.assert_close(masks, io["pred_masks"], **{TOLERANCE!r})
            torch.testing.assert_close(semantic(pixel_values=io["pixel_values"]).logits, io["logits"], **{TOLERANCE!r})
        image = (np.random.default_rng(0).random((48, 40)) * 255).astype(np.uint8)
        masks = pipeline("medical-mask-segmentation", model=folder + "/prompted", trust_remote_code=True,
                         device=-1)(image, input_boxes=[[8, 10, 30, 34]])["masks"]
        assert masks.shape == (1, 48, 40)
        segments = pipeline("image-segmentation", model=folder + "/semantic", trust_remote_code=True, device=-1)(
            np.stack([image] * 3, axis=-1))
        assert segments and segments[0]["label"] == "background", segments
    """, tmp_path)


def _new_module(new: str):
    if new.endswith(".app"):
        pytest.importorskip("gradio")
    return importlib.import_module(new)


# ------------------------------------------------------------------------------------------------ the old paths
def test_every_module_of_the_toolkit_moved():
    assert sorted(MOVED_MODULES) == [f"modeling_icmoe.{name}" for name in (
        "annotation", "app", "cli", "dicom", "export", "propagation", "volume_metrics", "volumes")]
    for old, new in MOVED_MODULES.items():
        assert new == old.replace("modeling_icmoe.", "modeling_icmoe.medical.")
        assert (REPO / (new.replace(".", "/") + ".py")).is_file()


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_MODULES.items()))
def test_old_paths_give_the_same_objects_with_a_warning(old, new):
    module = _new_module(new)
    names = [name for name in vars(module) if not name.startswith("__")]
    assert any(not name.startswith("_") for name in names)
    shim = importlib.import_module(old)
    for name in names:
        with pytest.warns(DeprecationWarning, match=rf"`{old}\.{name}` moved to `{new}\.{name}`"):
            value = getattr(shim, name)
        assert value is getattr(module, name), name
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in names:
            getattr(module, name)  # the new home does not warn


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_paths_know_no_other_names(old):
    _new_module(MOVED_MODULES[old])
    shim = importlib.import_module(old)
    with pytest.raises(AttributeError, match=f"module '{old}' has no attribute 'NOT_A_NAME'"):
        shim.NOT_A_NAME  # noqa: B018
    with pytest.raises(AttributeError):
        shim.__wrapped__  # noqa: B018  (tools probe dunders: they are not forwarded)


def test_old_import_statements_work_with_a_warning():
    from modeling_icmoe.medical import annotation, cli, dicom, propagation, volume_metrics, volumes

    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.volumes.load_volume`"):
        from modeling_icmoe.volumes import load_volume
    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.cli.main`"):
        from modeling_icmoe.cli import main
    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.dicom.load_dicom_series`"):
        from modeling_icmoe.dicom import load_dicom_series
    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.propagation.SlicePoint`"):
        from modeling_icmoe.propagation import SlicePoint
    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.volume_metrics.score_volume`"):
        from modeling_icmoe.volume_metrics import score_volume
    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.medical.annotation.AnnotationSession`"):
        from modeling_icmoe.annotation import AnnotationSession
    assert (load_volume, main, load_dicom_series, SlicePoint, score_volume, AnnotationSession) == (
        volumes.load_volume, cli.main, dicom.load_dicom_series, propagation.SlicePoint, volume_metrics.score_volume,
        annotation.AnnotationSession)


def test_mask_box_of_the_old_volumes_path_still_comes_from_imaging():
    from modeling_icmoe import imaging

    with pytest.warns(DeprecationWarning, match="moved to `modeling_icmoe.imaging.mask_box`") as caught:
        from modeling_icmoe.volumes import mask_box
    assert mask_box is imaging.mask_box
    assert len([w for w in caught if issubclass(w.category, DeprecationWarning)]) == 1  # one warning, the right one


# --------------------------------------------------------------------------------- the command and the package
def test_the_console_script_and_packages_point_at_the_new_place():
    from setuptools import find_packages

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = project["project"]["scripts"]["icmoe-sam"]
    assert target == "modeling_icmoe.medical.cli:main"
    module, name = target.split(":")
    assert getattr(importlib.import_module(module), name).__module__ == "modeling_icmoe.medical.cli"
    packages = find_packages(str(REPO), **project["tool"]["setuptools"]["packages"]["find"])
    assert {"modeling_icmoe", "modeling_icmoe.medical"} <= set(packages)


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize("module", ["modeling_icmoe.medical.cli", "modeling_icmoe.cli"])
def test_python_dash_m_runs_the_command(module):
    result = subprocess.run([sys.executable, "-m", module, "predict", "--help"], cwd=REPO, env=child_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--prompt_labels" in result.stdout
    moved = "`python -m modeling_icmoe.cli` moved to `python -m modeling_icmoe.medical.cli`"
    assert (moved in result.stderr) == (module == "modeling_icmoe.cli"), result.stderr[-3000:]


@pytest.mark.slow  # builds a wheel
def test_the_wheel_holds_the_subpackage_and_the_command(tmp_path):
    import shutil
    import zipfile

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "modeling_icmoe", source / "modeling_icmoe", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True, capture_output=True, timeout=300,
                   env=child_env())
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {f"modeling_icmoe/medical/{name}.py" for name in ("__init__", "volumes", "dicom", "cli", "app")} <= names
    assert {"modeling_icmoe/volumes.py", "modeling_icmoe/_moved.py", "modeling_icmoe/imaging.py"} <= names
    assert "icmoe-sam = modeling_icmoe.medical.cli:main" in entry_points


# ------------------------------------------------------------------------------ the checkpoint saved before the move
def test_pre_move_fixture_is_small_and_complete():
    files = {str(p.relative_to(PRE_MOVE)) for p in PRE_MOVE.rglob("*") if p.is_file()}
    assert {"expected.safetensors", "model/config.json", "model/model.safetensors", "model/modeling_icmoe_sam.py",
            "model/pipeline_icmoe_sam.py", "model/imaging.py", "adapter/icmoe_adapter_config.json",
            "adapter/icmoe_adapter_model.safetensors"} <= files
    assert sum(p.stat().st_size for p in PRE_MOVE.rglob("*") if p.is_file()) < 600_000


@pytest.mark.parametrize("auto_class", [AutoModel, AutoModelForMaskGeneration])
def test_pre_move_checkpoint_loads_with_the_installed_package(expected, auto_class):
    model = auto_class.from_pretrained(PRE_MOVE / "model").eval()
    assert type(model) is IcMoeSamModel
    _check_outputs(model, expected)


def test_pre_move_adapter_loads_with_the_installed_package(expected):
    base = SamModel.from_pretrained(PRE_MOVE / "model")  # the full checkpoint's SAM weights are the adapter's base
    _check_outputs(load_icmoe_adapter(base, PRE_MOVE / "adapter"), expected)


def test_pre_move_checkpoint_in_the_installed_pipeline(expected):
    model = AutoModel.from_pretrained(PRE_MOVE / "model").eval()
    segmenter = IcMoeSamSegmentationPipeline(model=model, processor=SamProcessor.from_pretrained(PRE_MOVE / "model"),
                                             device=-1)
    result = segmenter(expected["image"].numpy(), input_boxes=expected["image_boxes"].tolist())
    assert np.array_equal(result["masks"], expected["pipeline_masks"].numpy().astype(bool))
    np.testing.assert_allclose(result["scores"], expected["pipeline_scores"].numpy(), **TOLERANCE)


@pytest.mark.slow
def test_pre_move_checkpoint_as_remote_code_without_the_package(tmp_path):
    result = run_without_package(f"""
        import json
        import numpy as np
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModel, AutoModelForMaskGeneration, pipeline

        folder, expected = {str(PRE_MOVE / "model")!r}, load_file({str(PRE_MOVE / "expected.safetensors")!r})
        for auto_class in (AutoModel, AutoModelForMaskGeneration):
            model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
            assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
            with torch.no_grad():
                outputs = model(pixel_values=expected["pixel_values"], input_boxes=expected["input_boxes"])
            torch.testing.assert_close(outputs.pred_masks, expected["pred_masks"], **{TOLERANCE!r})
            torch.testing.assert_close(outputs.iou_scores, expected["iou_scores"], **{TOLERANCE!r})
        segmenter = pipeline("medical-mask-segmentation", model=folder, trust_remote_code=True, device=-1)
        result = segmenter(expected["image"].numpy(), input_boxes=expected["image_boxes"].tolist())
        assert np.array_equal(result["masks"], expected["pipeline_masks"].numpy().astype(bool))
        print("PIPELINE", type(segmenter).__module__, json.dumps(result["scores"].tolist()))
    """, tmp_path)
    line = next(line for line in result.stdout.splitlines() if line.startswith("PIPELINE"))
    module, scores = line.split(" ", 2)[1:]
    assert module.startswith("transformers_modules")
    np.testing.assert_allclose(json.loads(scores), load_file(PRE_MOVE / "expected.safetensors")["pipeline_scores"],
                               **TOLERANCE)
