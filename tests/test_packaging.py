"""An installed wheel carries the recipes and split files: a shipped recipe loads from any folder."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOAD_SHIPPED = """
from pathlib import Path
import fastlt
from fastlt.recipe import find_recipe, load_recipe
path = find_recipe("cifar100_lt/bcl-d")
recipe = load_recipe(path)
assert Path(fastlt.__file__).parent in path.parents, path
for split in (recipe.data.split, recipe.eval.train_split):
    assert Path(split).is_file() and Path(fastlt.__file__).parent in Path(split).resolve().parents, split
print(path)
"""


def test_wheel_ships_recipes_and_splits_and_loads_them_from_another_folder(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    for folder in ("fastlt", "pipelines", "splits"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("setup.py", "README.md"):
        shutil.copy(ROOT / file, source / file)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(tmp_path / "wheel"), str(source)], check=True)
    wheel = next((tmp_path / "wheel").glob("fastlt-*.whl"))
    installed = tmp_path / "installed"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    shipped = {p.relative_to(ROOT) for p in (ROOT / "pipelines").rglob("*.toml")} | {
        p.relative_to(ROOT) for p in (ROOT / "splits").rglob("*") if p.is_file()}
    assert shipped and all((installed / "fastlt" / p).is_file() for p in shipped)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run([sys.executable, "-c", LOAD_SHIPPED], cwd=elsewhere, capture_output=True, text=True,
                            env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == installed / "fastlt" / "pipelines" / "cifar100_lt" / "bcl-d.toml"
