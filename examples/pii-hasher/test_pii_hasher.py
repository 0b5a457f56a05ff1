import hashlib
import hmac
from pathlib import Path

import pytest

from plugin_server.testing import PluginLoadFailed, load_plugin, make_event

HERE = Path(__file__).parent
SALT = "a-long-secret-salt-value"


def expected(value: str, salt: str = SALT) -> str:
    return hmac.new(salt.encode(), value.encode(), hashlib.sha256).hexdigest()


def test_configured_properties_are_replaced_by_their_keyed_hash() -> None:
    event = make_event(
        "signed up",
        properties={"email": "a@example.com", "plan": "pro", "$set": {"name": "Ada"}},
        **{"$set_once": {"phone": "+4412345"}},
    )
    with load_plugin(HERE, {"salt": SALT}) as plugin:
        result = plugin.process_event(event)
    assert result is not None
    assert result["properties"] == {
        "email": expected("a@example.com"),
        "plan": "pro",
        "$set": {"name": expected("Ada")},
    }
    assert result["$set_once"] == {"phone": expected("+4412345")}
    assert result["distinct_id"] == "test-user"


def test_the_same_value_gives_the_same_hash_and_another_salt_another() -> None:
    event = make_event(properties={"email": "a@example.com"})
    with load_plugin(HERE, {"salt": SALT}) as plugin:
        first = plugin.process_event(event)
        second = plugin.process_event(event)
    with load_plugin(HERE, {"salt": SALT + "2"}) as plugin:
        other = plugin.process_event(event)
    assert first is not None and second is not None and other is not None
    assert first["properties"]["email"] == second["properties"]["email"]
    assert other["properties"]["email"] == expected("a@example.com", SALT + "2")
    assert other["properties"]["email"] != first["properties"]["email"]


def test_distinct_id_is_hashed_when_asked() -> None:
    with load_plugin(HERE, {"salt": SALT, "hash_distinct_id": "yes"}) as plugin:
        result = plugin.process_event(make_event(distinct_id="user@example.com"))
    assert result is not None and result["distinct_id"] == expected("user@example.com")


def test_a_short_salt_keeps_the_plugin_from_loading() -> None:
    with pytest.raises(PluginLoadFailed, match="at least 16 characters"):
        with load_plugin(HERE, {"salt": "short"}):
            pass
