from __future__ import annotations

from pathlib import Path

from finsecure.response.actions import default_responders
from finsecure.response.playbooks import PLAYBOOKS_DIR, load_playbooks


def test_load_playbooks__every_shipped_playbook_loads_with_a_unique_id() -> None:
    loaded = load_playbooks(PLAYBOOKS_DIR, action_types=default_responders())
    assert loaded.errors == ()
    files = sorted(PLAYBOOKS_DIR.glob("*.yml"))
    assert len(loaded.playbooks) == len(files) >= 4
    assert len({p.id for p in loaded.playbooks}) == len(loaded.playbooks)
    for playbook in loaded.playbooks:
        assert playbook.source.replace("_", "-").removesuffix(".yml") == playbook.id, "file named after id"
        destructive = [a for a in playbook.actions if default_responders()[a.type].destructive]
        assert all(a.approval for a in destructive), f"{playbook.id}: destructive actions need approval"


def test_load_playbooks__bad_files_are_reported_with_their_location(tmp_path: Path) -> None:
    (tmp_path / "ok.yml").write_text("id: ok\ntitle: Fine\nwhen: {on: alert}\nactions: [{type: webhook}]\n")
    (tmp_path / "dup.yml").write_text("id: ok\ntitle: Again\nwhen: {on: alert}\nactions: [{type: webhook}]\n")
    (tmp_path / "bad_type.yml").write_text("id: bad\ntitle: X\nwhen: {on: alert}\nactions: [{type: nuke}]\n")
    (tmp_path / "bad_when.yml").write_text(
        "id: bw\ntitle: X\nwhen: {on: sometimes}\nactions: [{type: email}]\n"
    )
    (tmp_path / "broken.yml").write_text("id: [unclosed\n")
    loaded = load_playbooks(tmp_path, action_types=default_responders())
    assert [p.id for p in loaded.playbooks] == ["ok"]
    errors = "\n".join(loaded.errors)
    assert "bad_type.yml: actions[0].type: unknown action type 'nuke'" in errors
    assert "bad_when.yml: when.on: alert or incident" in errors
    assert "ok.yml: id: 'ok' is already used by dup.yml" in errors
    assert "broken.yml" in errors
    assert len(loaded.errors) == 4


def test_load_playbooks__missing_directory_is_empty(tmp_path: Path) -> None:
    loaded = load_playbooks(tmp_path / "absent", action_types=default_responders())
    assert (loaded.playbooks, loaded.errors) == ((), ())
