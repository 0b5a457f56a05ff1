from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from plugin_server.testing import load_plugin, make_event

HERE = Path(__file__).parent
STOCKHOLM_IP = "89.160.20.129"


@pytest.fixture(scope="module")
def mmdb_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny GeoLite2-City database knowing one network."""
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-City", languages=["en"], description="test")
    writer.insert_network(
        IPSet(["89.160.20.128/25"]),
        {
            "city": {"geoname_id": 2673730, "names": {"en": "Stockholm"}},
            "continent": {"code": "EU", "geoname_id": 6255148, "names": {"en": "Europe"}},
            "country": {"geoname_id": 2661886, "iso_code": "SE", "names": {"en": "Sweden"}},
            "location": {"latitude": 59.3293, "longitude": 18.0686, "time_zone": "Europe/Stockholm"},
            "postal": {"code": "111 20"},
            "subdivisions": [{"iso_code": "AB", "names": {"en": "Stockholm County"}}],
        },
    )
    path = tmp_path_factory.mktemp("mmdb") / "GeoLite2-City-Test.mmdb"
    writer.to_db_file(str(path))
    return str(path)


def test_a_known_address_adds_the_location_to_the_event_and_the_person(mmdb_path: str) -> None:
    with load_plugin(HERE, mmdb_path=mmdb_path) as plugin:
        result = plugin.process_event(make_event(ip=STOCKHOLM_IP))
    assert result is not None
    properties = result["properties"]
    assert properties["$geoip_city_name"] == "Stockholm"
    assert properties["$geoip_country_code"] == "SE"
    assert properties["$geoip_continent_name"] == "Europe"
    assert properties["$geoip_latitude"] == pytest.approx(59.3293)
    assert properties["$geoip_time_zone"] == "Europe/Stockholm"
    assert properties["$geoip_subdivision_1_code"] == "AB"
    assert result["$set"]["$geoip_country_name"] == "Sweden"
    assert result["$set_once"]["$initial_geoip_country_name"] == "Sweden"


def test_the_ip_property_wins_over_the_request_ip(mmdb_path: str) -> None:
    with load_plugin(HERE, {"set_on_person": "no"}, mmdb_path=mmdb_path) as plugin:
        result = plugin.process_event(make_event(ip="10.0.0.1", properties={"$ip": STOCKHOLM_IP}))
    assert result is not None
    assert result["properties"]["$geoip_city_name"] == "Stockholm"
    assert "$set" not in result


def test_unknown_and_missing_addresses_and_opted_out_events_pass_unchanged(mmdb_path: str) -> None:
    events = [
        make_event(ip="10.0.0.1"),
        make_event(ip=None),
        make_event(ip=STOCKHOLM_IP, properties={"$geoip_disable": True}),
    ]
    with load_plugin(HERE, mmdb_path=mmdb_path) as plugin:
        assert plugin.process_events(events) == events


def test_without_a_geoip_database_events_pass_and_the_failure_is_logged() -> None:
    event = make_event(ip=STOCKHOLM_IP)
    with load_plugin(HERE) as plugin:
        assert plugin.process_event(event) == event
        assert plugin.logs[0][0] == "WARN"
        assert "GeoIP lookup failed" in plugin.logs[0][1]
