"""Adds `$geoip_*` properties from the server's GeoIP database (meta.geoip.locate).

Send `$geoip_disable: true` in an event's properties to skip it (e.g. for server-side events
whose IP is the server's own)."""

from typing import Any

from posthog_plugin import Meta, PluginEvent


def location_properties(record: dict[str, Any]) -> dict[str, Any]:
    """The `$geoip_*` properties of a GeoLite2 City record (as meta.geoip.locate gives it)."""
    city = record.get("city") or {}
    country = record.get("country") or {}
    continent = record.get("continent") or {}
    location = record.get("location") or {}
    subdivisions = record.get("subdivisions") or []
    found = {
        "$geoip_city_name": (city.get("names") or {}).get("en"),
        "$geoip_country_name": (country.get("names") or {}).get("en"),
        "$geoip_country_code": country.get("isoCode"),
        "$geoip_continent_code": continent.get("code"),
        "$geoip_continent_name": (continent.get("names") or {}).get("en"),
        "$geoip_latitude": location.get("latitude"),
        "$geoip_longitude": location.get("longitude"),
        "$geoip_time_zone": location.get("timeZone"),
        "$geoip_postal_code": (record.get("postal") or {}).get("code"),
        "$geoip_subdivision_1_code": subdivisions[0].get("isoCode") if subdivisions else None,
    }
    return {key: value for key, value in found.items() if value is not None}


async def process_event(event: PluginEvent, meta: Meta) -> PluginEvent:
    properties = event.setdefault("properties", {})
    ip = properties.get("$ip") or event.get("ip")
    if not ip or properties.get("$geoip_disable"):
        return event
    try:
        record = await meta.geoip.locate(ip)
    except Exception as error:  # no GeoIP database on this instance: pass events through
        meta.console.warn("GeoIP lookup failed:", error)
        return event
    if record is None:  # a private or unknown address
        return event
    found = location_properties(record)
    properties.update(found)
    if meta.config.get("set_on_person") != "no":
        event.setdefault("$set", {}).update(found)
        event.setdefault("$set_once", {}).update({f"$initial_{k[1:]}": v for k, v in found.items()})
    return event
