"""Spec scenarios 4.6 (action matching), pure: steps checked against events, persons and elements."""

from __future__ import annotations

from typing import Any

import pytest

from plugin_server.ingestion.actions import Action, ActionStep, MatchInput, match_actions
from plugin_server.ingestion.property_filters import casting_compare
from plugin_server.ingestion.selectors import selector_matches

VALUE_SETS: dict[str, dict[str, Any]] = {
    "A": {"foo": "bar"},
    "B": {"foo": "bar", "pol": "pot"},
    "C": {"foo": "baR"},
    "D": {"foo": "baz"},
    "E": {"foo": "barabara"},
    "F": {"foo": "rabarbar"},
    "G": {"foo": 7},
    "H": {},
    "I": {"fig": 999},
    "J": {"foo": True},
    "K": {"foo": None},
}


def _action(*steps: ActionStep, action_id: int = 1) -> Action:
    return Action(
        id=action_id,
        team_id=2,
        name="action",
        post_to_slack=False,
        slack_message_format="",
        steps=list(steps),
    )


def _matches(
    action: Action,
    properties: dict[str, Any] | None = None,
    *,
    event: str = "$pageview",
    elements: list[dict[str, Any]] | None = None,
    person: dict[str, Any] | None = None,
    person_id: int | None = None,
    cohort_members: set[tuple[int, int]] | None = None,
) -> bool:
    props = {"$current_url": "http://example.com/foo/"} if properties is None else properties
    data = MatchInput(
        event={"event": event, "distinct_id": "my_id", "properties": props},
        properties=props,
        elements=elements or [],
        person_properties=person,
        person_id=person_id,
    )
    return bool(match_actions([action], data, cohort_members or set()))


def _matching_sets(step: ActionStep) -> str:
    return "".join(k for k, props in VALUE_SETS.items() if _matches(_action(step), props))


def test_4_6_087_action_without_steps_never_matches() -> None:
    assert not _matches(_action())


@pytest.mark.parametrize(
    ("scenario", "operator", "value", "expected"),
    [
        ("088_exact", "exact", "bar", "AB"),
        ("088_no_operator", None, "bar", "AB"),
        ("089_is_not", "is_not", "bar", "CDEFGHIJK"),
        ("090_icontains", "icontains", "bar", "ABCEF"),
        ("091_not_icontains", "not_icontains", "bar", "DGHIJK"),
        ("092_regex", "regex", "^bar", "ABE"),
        ("092_regex_2", "regex", "(?:.+bar|[A-Z])", "CEF"),
        ("093_not_regex", "not_regex", "^bar", "CDFGHIJK"),
        ("093_not_regex_2", "not_regex", "(?:.+bar|[A-Z])", "ABDGHIJK"),
        ("094_is_set", "is_set", "is_set", "ABCDEFGJK"),
        ("094_is_not_set", "is_not_set", "is_not_set", "HI"),
    ],
)
def test_4_6_088_to_094_event_property_filters(
    scenario: str, operator: str | None, value: str, expected: str
) -> None:
    prop_filter: dict[str, Any] = {"type": "event", "key": "foo", "value": value}
    if operator:
        prop_filter["operator"] = operator
    assert _matching_sets(ActionStep(id=1, properties=[prop_filter])) == expected


def test_4_6_095_gt_and_lt() -> None:
    values: list[Any] = ["bar", "baR", "baz", "barabara", "rabarbar", -1, 5, 9999999, "H", "I", True, None]

    def matching(operator: str) -> list[Any]:
        step = ActionStep(
            id=1, properties=[{"type": "event", "key": "foo", "value": 5, "operator": operator}]
        )
        out = []
        for v in values:
            props = {} if v == "H" else {"fig": 999} if v == "I" else {"foo": v}
            if _matches(_action(step), props):
                out.append(v)
        return out

    assert matching("gt") == [9999999]
    assert matching("lt") == [-1, True]


@pytest.mark.parametrize("url_matching", ["contains", ""])
def test_4_6_096_url_contains(url_matching: str) -> None:
    step = ActionStep(id=1, url="example.com", url_matching=url_matching, event="$pageview")
    assert not _matches(_action(step), {"$current_url": "http://posthog.com/pricing"})
    assert _matches(_action(step), {"$current_url": "https://example.com/"})


def test_4_6_097_url_contains_with_like_wildcards() -> None:
    step = ActionStep(id=1, url="exampl_.com/%.html", url_matching="contains")
    assert not _matches(_action(step), {"$current_url": "https://example.com/"})
    assert _matches(_action(step), {"$current_url": "https://example.com/index.html"})


def test_4_6_098_url_regex() -> None:
    step = ActionStep(id=1, url=r"^https?:\/\/example\.com\/\d+(\/[a-r]*\/?)?$", url_matching="regex")
    for url in ("https://example.com/23/hello", "https://example.com/3/abc/"):
        assert _matches(_action(step), {"$current_url": url})
    for url in (
        "https://example.com/3/xyz/",
        "https://example.com/",
        "https://example.com/uno/dos/",
        "https://example.com/1foo/",
    ):
        assert not _matches(_action(step), {"$current_url": url})


def test_4_6_099_url_exact() -> None:
    step = ActionStep(id=1, url="https://www.mozilla.org/de/", url_matching="exact")
    assert _matches(_action(step), {"$current_url": "https://www.mozilla.org/de/"})
    assert not _matches(_action(step), {"$current_url": "https://www.mozilla.org/de"})
    assert not _matches(_action(step), {"$current_url": "https://www.mozilla.org/de/firefox/"})


def test_4_6_100_event_name() -> None:
    step = ActionStep(id=1, event="meow")
    assert _matches(_action(step), event="meow")
    assert not _matches(_action(step), event="$meow")
    assert not _matches(_action(step), event="WOOF")


def test_4_6_101_event_name_and_url() -> None:
    step = ActionStep(id=1, event="meow", url="pets.com/", url_matching="contains")
    yes = [("meow", "http://www.pets.com/"), ("meow", "https://pets.com/food")]
    no = [
        ("$meow", "https://xyz.pets.com/"),
        ("meow", "https://www.pets.com.de/"),
        ("meow", "https://www.pets.co"),
    ]
    for name, url in yes:
        assert _matches(_action(step), {"$current_url": url}, event=name)
    for name, url in no:
        assert not _matches(_action(step), {"$current_url": url}, event=name)


@pytest.mark.parametrize("operator", ["exact", None])
def test_4_6_102_person_filter(operator: str | None) -> None:
    prop_filter: dict[str, Any] = {"type": "person", "key": "foo", "value": "bar"}
    if operator:
        prop_filter["operator"] = operator
    step = ActionStep(id=1, properties=[prop_filter])
    matching = "".join(k for k, props in VALUE_SETS.items() if _matches(_action(step), {}, person=props))
    assert matching == "AB"


def test_4_6_103_cohort_filter() -> None:
    in_cohort = _action(
        ActionStep(id=1, properties=[{"type": "cohort", "key": "id", "value": 5}]), action_id=1
    )
    everyone = _action(
        ActionStep(id=2, properties=[{"type": "cohort", "key": "id", "value": "all"}]), action_id=2
    )
    members = {(5, 77)}

    def matched(person_id: int | None) -> list[int]:
        data = MatchInput(
            event={"event": "$pageview"},
            properties={},
            elements=[],
            person_properties={},
            person_id=person_id,
        )
        return [a.id for a in match_actions([in_cohort, everyone], data, members)]

    assert matched(77) == [1, 2]
    assert matched(None) == [2]
    assert matched(78) == [2]


def test_4_6_105_element_href() -> None:
    step = ActionStep(id=1, href="https://example.com/")
    elements = [{"tag_name": "span"}, {"tag_name": "a", "href": "https://example.com/"}, {"tag_name": "main"}]
    assert _matches(_action(step), elements=elements)
    assert not _matches(_action(step), elements=[{"tag_name": "a", "href": "https://other.com/"}])


def test_4_6_106_element_tag_and_text_on_one_element() -> None:
    step = ActionStep(id=1, tag_name="h1", text="Hallo!")
    assert _matches(_action(step), elements=[{"tag_name": "h1", "text": "Hallo!"}])
    assert not _matches(_action(step), elements=[{"tag_name": "h3", "text": "Hallo!"}])
    assert not _matches(_action(step), elements=[{"tag_name": "h1", "text": "Ciao!"}])
    assert not _matches(_action(step), elements=[{"tag_name": "h1"}, {"tag_name": "i", "text": "Hallo!"}])


def _el(tag: str, *classes: str, **fields: Any) -> dict[str, Any]:
    element: dict[str, Any] = {"tag_name": tag, "attributes": fields.pop("attributes", {})}
    if classes:
        element["attr_class"] = list(classes)
    element.update(fields)
    return element


def test_4_6_107_selectors_on_steps_and_element_filters() -> None:
    elements = [_el("h1", "headline", text="Hallo!"), _el("a", href="https://example.com/"), _el("main")]

    def step_matches(selector: Any) -> bool:
        return _matches(_action(ActionStep(id=1, selector=selector)), elements=elements)

    assert step_matches("main h1.headline")
    assert not step_matches("main > h1.headline")
    assert step_matches('main > a[href="https://example.com/"]')
    element_filter = ActionStep(
        id=1, properties=[{"type": "element", "key": "selector", "value": ["main h1.headline"]}]
    )
    assert _matches(_action(element_filter), elements=elements)
    assert not _matches(
        _action(ActionStep(id=1, properties=[{"type": "element", "key": "selector", "value": ""}])),
        elements=elements,
    )
    assert not _matches(
        _action(ActionStep(id=1, properties=[{"type": "element", "key": "selector", "value": None}])),
        elements=elements,
    )
    oof = [_el("h1", "oof", text="Hallo!"), *elements[1:]]
    assert not _matches(_action(ActionStep(id=1, selector="main h1.headline")), elements=oof)
    assert _matches(_action(ActionStep(id=1, selector='main > a[href="https://example.com/"]')), elements=oof)
    direct = [_el("h1", "headline"), _el("main")]
    assert _matches(_action(ActionStep(id=1, selector="main h1.headline")), elements=direct)
    assert _matches(_action(ActionStep(id=1, selector="main > h1.headline")), elements=direct)
    assert _matches(_action(element_filter), elements=direct)


def test_4_6_108_steps_are_ored_and_values_cast() -> None:
    action = _action(
        ActionStep(id=1, event="tenet"),
        ActionStep(
            id=2,
            properties=[
                {"type": "event", "key": "insight", "value": ["STICKINESS"], "operator": "exact"},
                {
                    "type": "event",
                    "key": "total_event_action_filters_count",
                    "value": "0",
                    "operator": "exact",
                },
                {"type": "event", "key": "total_event_actions_count", "value": "0", "operator": "gt"},
            ],
        ),
    )
    props = {"insight": "STICKINESS", "total_event_action_filters_count": 0, "total_event_actions_count": 4}
    assert _matches(action, props, event="meow")


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("[data-attr='xyz']", True),
        ("h1[data-attr='xyz']", True),
        (".headline[data-attr='xyz']", True),
        ("main [data-attr='xyz']", True),
        (".top [data-attr='xyz']", True),
        ("[data-attr='foo']", False),
        ("main[data-attr='xyz']", False),
        ("div[data-attr='xyz']", False),
    ],
)
def test_4_6_109_attribute_selectors(selector: str, expected: bool) -> None:
    elements = [
        _el("h1", "headline", attributes={"attr__data-attr": "xyz"}),
        _el("div", "top"),
        _el("div"),
        _el("main"),
    ]
    assert selector_matches(selector, elements) is expected


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (s, True)
        for s in (
            "main h1",
            "main .headline",
            "main div",
            "main .top",
            "div h1",
            "div .headline",
            "main > .top > h1",
            "main > div",
            "main > .top",
            "div > h1",
            "div > .headline",
        )
    ]
    + [
        (s, False)
        for s in ("h1 div", ".top main", "main > h1", "main > .headline", "h1 > div", ".top > main")
    ],
)
def test_4_6_110_descendant_selectors(selector: str, expected: bool) -> None:
    elements = [_el("h1", "headline"), _el("div", "top"), _el("main")]
    assert selector_matches(selector, elements) is expected


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (s, True)
        for s in (
            "main > .outer > .inner > h1",
            "main > div",
            "main > .outer",
            "div > h1",
            ".inner > .headline",
        )
    ]
    + [
        (s, False)
        for s in (
            "main > h1",
            "main > .inner",
            "main > .inner > h1",
            "main > .outer > h1",
            "h1 > div",
            "outer > main",
        )
    ],
)
def test_4_6_111_direct_child_selectors(selector: str, expected: bool) -> None:
    elements = [_el("h1", "headline"), _el("div", "inner"), _el("div", "outer"), _el("main")]
    assert selector_matches(selector, elements) is expected


def test_4_6_112_mixed_combinators() -> None:
    elements = [_el(t) for t in ("span", "div", "a", "div", "div", "aside", "section")]
    assert selector_matches("aside div > span", elements)


def test_4_6_113_nth_pseudo_classes() -> None:
    elements = [_el("span", nth_child=2, nth_of_type=1), _el("section")]
    assert selector_matches("section > span:nth-child(2):nth-of-type(1)", elements)
    assert not selector_matches("section > span:nth-child(1):nth-of-type(1)", elements)
    assert not selector_matches("section > span:nth-child(2):nth-of-type(3)", elements)


def test_5_2_23_unsupported_pseudo_classes_are_ignored_not_hanging() -> None:
    """Recommendation: the original looped forever on these; they are dropped."""
    elements = [_el("span", nth_child=2), _el("section")]
    assert selector_matches("section > span:nth-last-child(2)", elements)
    assert selector_matches("section > span:nth-child(0)", elements)


def test_5_2_23_invalid_regex_fails_only_that_step() -> None:
    bad = ActionStep(id=1, properties=[{"type": "event", "key": "foo", "value": "(", "operator": "regex"}])
    good = ActionStep(id=2, event="$pageview")
    assert not _matches(_action(bad), {"foo": "bar"})
    assert _matches(_action(bad, good), {"foo": "bar"})


EXACT_TRUE = [(2, "2"), ("2", 2), (True, "true"), (True, True), ("90", "90"), ("1", True)]
EXACT_FALSE = [("1", "true"), ("1", False), (False, "1"), (False, "true")]
LT_TRUE = [(False, "1"), (False, "true"), ("2", 3), ("445.3", 9099.2)]
LT_FALSE = [(2, "2"), ("1", "true"), (True, True), ("1", True), ("1", False)]
GT_TRUE = [("1", False), (True, "-1"), (1, "false"), (333, "2"), ("9032.3", -1.2)]
GT_FALSE = [(False, "1"), ("2", 3), (2, "2")]


def test_4_6_114_casting_compare_vectors() -> None:
    for operator, true_cases, false_cases in (
        ("exact", EXACT_TRUE, EXACT_FALSE),
        ("lt", LT_TRUE, LT_FALSE),
        ("gt", GT_TRUE, GT_FALSE),
    ):
        for a, b in true_cases:
            assert casting_compare(a, b, operator), (operator, a, b)
        for a, b in false_cases:
            assert not casting_compare(a, b, operator), (operator, a, b)
