"""tools/mutate.py's refresh of a group's copy of the tests: a test written to kill a survivor
must reach the next make mutate (the copy in mutants/<group>/mutants/tests is not refreshed by
mutmut itself)."""

import tools.mutate as mutate


def test_a_changed_or_new_test_file_makes_the_groups_copy_stale(tmp_path, monkeypatch):
    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_a.py").write_text("def test_a(): pass\n")
    monkeypatch.setattr(mutate, "ROOT", root)
    copy = tmp_path / "work" / "tests"
    assert mutate._stale_tests(copy) == []  # no copy yet: mutmut's first run makes it
    copy.mkdir(parents=True)
    (copy / "test_a.py").write_text("def test_a(): pass\n")
    assert mutate._stale_tests(copy) == []
    (root / "tests" / "test_a.py").write_text("def test_a(): assert 1\n")
    (root / "tests" / "test_b.py").write_text("def test_b(): pass\n")
    assert mutate._stale_tests(copy) == ["test_a.py", "test_b.py"]


def test_a_groups_folder_copied_from_another_checkout_is_linked_to_this_one(tmp_path, monkeypatch):
    root, other = tmp_path / "project", tmp_path / "other"
    for r in (root, other):
        (r / "tests").mkdir(parents=True)
        (r / "fedal").mkdir()
    monkeypatch.setattr(mutate, "ROOT", root)
    monkeypatch.setattr(mutate, "WORK", root / "mutants")
    d = root / "mutants" / "the-store"
    d.mkdir(parents=True)
    (d / "tests").symlink_to(other / "tests")  # as `cp -r` of another worktree's mutants/ leaves it
    group = mutate.Group("the store", ["fedal/store/*.py"], ["tests/test_store.py"])
    assert mutate.workdir(group) == d
    assert (d / "tests").resolve() == root / "tests" and (d / "fedal").resolve() == root / "fedal"
