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


def test_mutants_made_from_other_text_are_made_anew_even_when_they_look_newer(tmp_path, monkeypatch):
    """mutmut trusts modification times; a merge or a folder copied from another worktree leaves
    mutants of a file's old text that look newer than the source (how the config, site-data and
    checkpoint groups kept their pre-refactor results). prepare() compares contents instead."""
    import json
    import os

    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    (root / "fedal").mkdir()
    src = root / "fedal" / "m.py"
    src.write_text("def f():\n    return 1\n")
    monkeypatch.setattr(mutate, "ROOT", root)
    monkeypatch.setattr(mutate, "WORK", root / "mutants")
    group = mutate.Group("g", ["fedal/m.py"], ["tests/test_m.py"])
    work = root / "mutants" / "g" / "mutants"
    copy = work / "fedal" / "m.py"
    copy.parent.mkdir(parents=True)
    copy.write_text("def x_f__mutmut_1(): ...  # mutants of the text\n")
    (work / "mutmut-stats.json").write_text("{}")
    assert mutate.prepare(group)  # no digests recorded (an older marker or none): made anew
    assert not copy.exists() and not (work / "mutmut-stats.json").exists()
    assert json.loads((work / "fedal-mutate-files.json").read_text())["sources"]["fedal/m.py"]

    copy.write_text("def x_f__mutmut_1(): ...\n")  # mutmut made them from the recorded text
    assert not mutate.prepare(group) and copy.exists()  # same text: kept, with their results

    src.write_text("def f():\n    return 2\n")  # the source changes...
    old = copy.stat().st_mtime - 3600
    os.utime(src, (old, old))  # ...but looks older than the mutants, as after a checkout
    assert mutate.prepare(group) and not copy.exists()


def test_a_test_file_added_to_a_group_makes_mutmut_record_which_tests_call_what_anew(tmp_path, monkeypatch):
    """mutmut runs against a mutant only the tests its record says call the function; a test file
    added to the group's selection is missing from a record made before, and its tests would never
    run against the mutants (how tests/test_run_dirs.py seemed not to kill the refusal's mutants)."""
    root = tmp_path / "project"
    (root / "tests").mkdir(parents=True)
    (root / "fedal").mkdir()
    (root / "fedal" / "m.py").write_text("def f():\n    return 1\n")
    monkeypatch.setattr(mutate, "ROOT", root)
    monkeypatch.setattr(mutate, "WORK", root / "mutants")
    work = root / "mutants" / "g" / "mutants"
    stats = work / "mutmut-stats.json"
    mutate.prepare(mutate.Group("g", ["fedal/m.py"], ["tests/test_m.py"]))
    stats.write_text("{}")
    mutate.prepare(mutate.Group("g", ["fedal/m.py"], ["tests/test_m.py"]))
    assert stats.exists()  # nothing changed: the record stays
    mutate.prepare(mutate.Group("g", ["fedal/m.py"], ["tests/test_m.py", "tests/test_n.py"]))
    assert not stats.exists()
