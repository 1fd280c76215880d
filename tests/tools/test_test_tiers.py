"""The test suite in tiers: test files live beside the code they test (tests/<package>/), and every
test that trains is marked slow, so that `make test-fast` (pytest -m "not slow") is the unit tier."""
import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _is_slow_mark(node: ast.expr) -> bool:
    """pytest.mark.slow, as a decorator or a module's pytestmark."""
    return isinstance(node, ast.Attribute) and node.attr == "slow" and ast.unparse(node.value) == "pytest.mark"


def _trains(function: ast.FunctionDef) -> bool:
    """Runs a training loop: calls .train() on a trainer, or runs projects/train_net.py to train."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "train":
            if "trainer" in ast.unparse(node.func.value).lower() and not node.args:
                return True
        if isinstance(node, ast.Constant) and node.value == "projects/train_net.py":
            if "--eval-only" not in ast.unparse(function):
                return True
    return False


def _test_files():
    return sorted(TESTS.rglob("test_*.py"))


def test_test_files_live_in_the_folder_of_their_package():
    assert _test_files()
    assert [p.name for p in TESTS.glob("test_*.py")] == []


def test_every_test_that_trains_is_marked_slow():
    unmarked = []
    for path in _test_files():
        tree = ast.parse(path.read_text())
        module_slow = any(
            isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in n.targets) and _is_slow_mark(n.value)
            for n in tree.body
        )
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and _trains(node):
                if not (module_slow or any(_is_slow_mark(d) for d in node.decorator_list)):
                    unmarked.append(f"{path.relative_to(TESTS)}::{node.name}")
    assert unmarked == []


def test_the_tier_check_sees_a_training_test():
    trains, evaluates = (
        ast.parse(source).body[0]
        for source in (
            "def test_x(tmp_path):\n    trainer = Trainer(cfg)\n    trainer.train()\n",
            'def test_y():\n    run("projects/train_net.py", "--eval-only")\n',
        )
    )
    assert _trains(trains) and not _trains(evaluates)
