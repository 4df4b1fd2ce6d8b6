"""Names that become paths are checked in one place (appion.base.names)."""
import pytest

from appion.base.names import BadNameError, check_inside, check_name


@pytest.mark.parametrize("value", ["25nov21a", "loop1", "ddstack_2", "run-3.b", "A" * 100])
def test_plain_names_pass(value):
    assert check_name("--runname", value) == value


@pytest.mark.parametrize("value", ["", ".", "..", "../../escape", "/tmp/x", "a/b", "-x", ".hidden", "a b", "x\n",
                                   "A" * 101, "é", None, 3])
def test_other_names_are_refused_with_the_option(value):
    with pytest.raises(BadNameError, match="--name"):
        check_name("--name", value)


def test_check_inside(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    assert check_inside(root / "a", [root]) == (root / "a").resolve()
    assert check_inside(root, [root]) == root.resolve()
    with pytest.raises(BadNameError, match="outside"):
        check_inside(root / ".." / "elsewhere", [root], "--rundir")
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(BadNameError, match="outside"):
        check_inside(root / "a" / ".." / ".." / "link", [root])
