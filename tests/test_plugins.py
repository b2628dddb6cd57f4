import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import harness
from harness import registry

REPO = Path(__file__).resolve().parent.parent


def test_builtins_are_registered_from_the_plugin_folders():
    assert {"full_ft", "lora"} <= set(registry.methods())
    assert {"digits", "photos", "cells", "count", "orientation"} == set(registry.task_selectors()["offline"])
    assert registry.get_task("cifar100").suite == "vtab"


def test_builtin_folders_are_not_installed_as_top_level_packages():
    assert "methods" not in sys.modules and "tasks" not in sys.modules


def test_task_groups_expand_in_group_order_without_duplicates():
    assert registry.expand_tasks(["offline-structured"]) == ["count", "orientation"]
    assert registry.expand_tasks(["count", "offline-structured"]) == ["count", "orientation"]
    assert len(registry.expand_tasks(["vtab"])) == 19


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(harness.UserError, match="unknown method 'nope'; valid methods: .*full_ft, lora"):
        registry.get_method("nope")
    with pytest.raises(harness.UserError, match="unknown task 'nope'.*valid task groups: offline"):
        registry.expand_tasks(["nope"])


def test_external_plugin_file_registers_without_core_edits(loaded_plugin):
    assert registry.get_method("bitfit").source == str(loaded_plugin.resolve())  # the file, for messages
    assert registry.get_method("bitfit").fn.__module__.startswith("_adaptbench_plugins.external.")
    assert registry.expand_tasks(["tiny"]) == ["tiny_bright"]


def test_missing_and_broken_plugins_are_user_errors(tmp_path):
    with pytest.raises(harness.UserError, match="plugin file not found"):
        harness.load_plugins([str(tmp_path / "absent.py")])
    broken = tmp_path / "broken.py"
    broken.write_text("raise ValueError('boom')\n")
    with pytest.raises(harness.UserError, match="plugin .*broken.py' raised ValueError: boom; fix the plugin"):
        harness.load_plugins([str(broken)])
    with pytest.raises(harness.UserError, match="cannot be imported"):
        harness.load_plugins(["no_such_module_xyz"])


def test_entry_point_plugins_load_in_a_fresh_process(tmp_path):
    (tmp_path / "ep_plugin.py").write_text(textwrap.dedent('''
        import harness

        @harness.register_method("entry_point_method")
        def entry_point_method(model, compression=None):
            """Registered through the adaptbench.plugins entry-point group."""
            return model
    '''))
    dist_info = tmp_path / "ep_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[adaptbench.plugins]\nmine = ep_plugin\n")
    code = "import json, harness.registry as r; print(json.dumps(sorted(r.methods())))"
    env_path = f"{tmp_path}:{REPO}"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONPATH": env_path, "PATH": ""}).stdout
    assert "entry_point_method" in json.loads(output)


def test_clashing_registration_is_refused_even_under_the_same_function_name():
    def lora(model, compression=None):
        return model

    lora.__qualname__ = "lora"  # as a plugin's module-level `def lora` is named
    builtin = registry.get_method("lora")
    with pytest.raises(harness.UserError) as refused:
        harness.register_method("lora")(lora)
    assert str(refused.value) == (f"method 'lora' is registered twice ({REPO / 'methods' / 'lora.py'} and "
                                  f"{__file__}); rename one of them")
    assert registry.get_method("lora") is builtin


def test_roles_order_and_context_are_declared_at_registration_and_checked():
    assert registry.get_method("small_peft").info() == {"compresses": True, "role": "small-model baseline",
                                                        "order": 5}
    assert registry.get_method("diffrate").context == ("train_data",)
    with pytest.raises(ValueError, match="method role must be one of"):
        harness.register_method("odd_role", role="judge")
    with pytest.raises(ValueError, match="unknown run context labels"):
        harness.register_method("odd_context", context=("labels",))


def test_a_task_needs_no_group_and_a_group_is_free_form():
    def ungrouped(data_root=None):
        """A task of no VTAB group."""

    def custom(data_root=None):
        """A task of a group of its own."""

    harness.register_task("test_ungrouped", suite="test_groups")(ungrouped)
    harness.register_task("test_custom_group", suite="test_groups", group="medical")(custom)
    assert registry.expand_tasks(["test_groups"]) == ["test_custom_group", "test_ungrouped"]
    assert registry.expand_tasks(["test_groups-medical"]) == ["test_custom_group"]
    assert "test_groups-None" not in registry.task_selectors()
