"""Inline session policies: the exact s3 document, scope path rules, templates, and the evaluator
that proves what a document allows (moto accepts session policies but never enforces them)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.session_policy import (
    MAX_POLICY_CHARS,
    PolicyTemplates,
    ScopeError,
    TemplateError,
    evaluate,
    minify,
    parse_scope,
)

TEMPLATES = PolicyTemplates.builtin()
EXPECTED_S3 = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "AgentKeysScopedObjects", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
         "Resource": "arn:aws:s3:::my-bucket/agents/a1/*"},
        {"Sid": "AgentKeysScopedList", "Effect": "Allow", "Action": "s3:ListBucket",
         "Resource": "arn:aws:s3:::my-bucket",
         "Condition": {"StringLike": {"s3:prefix": ["agents/a1/*", "agents/a1/"]}}},
    ],
}


def s3_policy(scope_path: str = "my-bucket/agents/a1/") -> dict:
    doc = TEMPLATES.render_document("s3", scope_path)
    assert doc is not None
    return doc


# --- the document ---------------------------------------------------------------------------


def test_s3_policy_is_exactly_the_scoped_document() -> None:
    text = TEMPLATES.render("s3", "my-bucket/agents/a1/")
    assert json.loads(text) == EXPECTED_S3
    assert text == json.dumps(EXPECTED_S3, sort_keys=True, separators=(",", ":"))  # minified, sorted keys
    assert text == minify(EXPECTED_S3) and " " not in text and "\n" not in text
    assert TEMPLATES.render("s3", "my-bucket/agents/a1/") == text  # deterministic


def test_trailing_slash_is_implied() -> None:
    assert TEMPLATES.render("s3", "my-bucket/agents/a1") == TEMPLATES.render("s3", "my-bucket/agents/a1/")


def test_bucket_alone_grants_the_whole_bucket() -> None:
    doc = s3_policy("my-bucket")
    assert doc["Statement"][0]["Resource"] == "arn:aws:s3:::my-bucket/*"
    assert TEMPLATES.render("s3", "my-bucket/") == TEMPLATES.render("s3", "my-bucket")
    assert evaluate(doc, "s3:GetObject", "arn:aws:s3:::my-bucket/any/key")
    assert not evaluate(doc, "s3:GetObject", "arn:aws:s3:::my-bucket-2/any/key")


def test_services_without_a_template_get_no_inline_policy() -> None:
    assert TEMPLATES.render("ses", "anything") is None
    assert TEMPLATES.render("sqs", "") is None
    assert TEMPLATES.services == ("s3",)


@pytest.mark.parametrize("scope_path,needle", [
    ("", "required"),
    ("/agents/a1/", "bucket name"),
    ("my-bucket/agents/*", "'*'"),
    ("my-bucket/agents/a?/", "'?'"),
    ("my-bucket/${aws:username}/", "'$'"),
    ("my-bucket/agents/../a2/", "'..'"),
    ("my-bucket/agents/a1\n/", "control"),
    ("my-bucket/agents/a1\x00", "control"),
    ("my-bucket//a1/", "empty segment"),
    ("My_Bucket/a1/", "not a valid S3 bucket name"),
    ("ab/a1/", "not a valid S3 bucket name"),
    ("192.168.0.1/a1/", "not a valid S3 bucket name"),
    ("my-bucket/" + "k" * 1100, "longer than"),
])
def test_bad_scope_paths_are_refused(scope_path: str, needle: str) -> None:
    with pytest.raises(ScopeError) as info:
        TEMPLATES.render("s3", scope_path)
    assert needle in str(info.value)


def test_policy_longer_than_2048_is_refused() -> None:
    ok = "my-bucket/" + "k" * 500 + "/"
    assert len(TEMPLATES.render("s3", ok)) <= MAX_POLICY_CHARS
    with pytest.raises(ScopeError, match="2048"):
        TEMPLATES.render("s3", "my-bucket/" + "k" * 700 + "/")


def test_scope_values_cannot_change_the_document_structure() -> None:
    doc = s3_policy('my-bucket/a"},{"Effect":"Allow","Action":"iam:PassRole","Resource":"arn"}/')
    assert len(doc["Statement"]) == 2
    assert doc["Statement"][0]["Resource"].startswith('arn:aws:s3:::my-bucket/a"},{')
    assert not evaluate(doc, "iam:PassRole", "arn")


def test_parse_scope() -> None:
    assert parse_scope("b-1/agents/a1").values() == {"scope_path": "b-1/agents/a1/", "bucket": "b-1", "prefix": "agents/a1/"}
    assert parse_scope("b-1").values() == {"scope_path": "b-1/", "bucket": "b-1", "prefix": ""}
    assert parse_scope("Not_A_Bucket/x", service="custom").bucket == "Not_A_Bucket"  # S3 naming only for s3


# --- custom templates -----------------------------------------------------------------------


def test_custom_template_substitutes_and_keeps_iam_policy_variables(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"dynamodb": {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "dynamodb:GetItem",
                       "Resource": "arn:aws:dynamodb:*:*:table/${bucket}",
                       "Condition": {"ForAllValues:StringLike": {
                           "dynamodb:LeadingKeys": ["${prefix}*", "${aws:PrincipalTag/agent_id}", "${*}"]}}}],
    }}))
    t = PolicyTemplates.from_file(path)
    assert t.services == ("dynamodb", "s3")  # the built-in s3 template stays
    doc = t.render_document("dynamodb", "orders/tenant-7")
    stmt = doc["Statement"][0]
    assert stmt["Resource"] == "arn:aws:dynamodb:*:*:table/orders"
    assert stmt["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] == [
        "tenant-7/*", "${aws:PrincipalTag/agent_id}", "${*}"]


def test_template_checks() -> None:
    with pytest.raises(TemplateError, match="placeholders are allowed in values only"):
        PolicyTemplates({"x": {"Version": "2012-10-17", "Statement": [], "${bucket}": 1}})
    with pytest.raises(TemplateError, match="must be a policy document"):
        PolicyTemplates({"x": ["not", "a", "document"]})
    with pytest.raises(TemplateError, match="renders to"):
        PolicyTemplates({"x": {"Version": "2012-10-17", "Statement": [{"Sid": "a" * 3000}]}})


# --- the evaluator ---------------------------------------------------------------------------

B = "arn:aws:s3:::bucket"


@pytest.mark.parametrize("action,resource,context,allowed", [
    ("s3:GetObject", f"{B}/agents/a1/x", {}, True),
    ("s3:PutObject", f"{B}/agents/a1/deep/er/x.bin", {}, True),
    ("s3:DeleteObject", f"{B}/agents/a1/", {}, True),
    ("S3:getobject", f"{B}/agents/a1/x", {}, True),  # actions are case-insensitive
    ("s3:ListBucket", B, {"s3:prefix": "agents/a1/"}, True),
    ("s3:ListBucket", B, {"s3:prefix": "agents/a1/sub/"}, True),
    ("s3:GetObject", f"{B}/agents/a10/x", {}, False),
    ("s3:GetObject", f"{B}/agents/a1", {}, False),
    ("s3:GetObject", f"{B}/Agents/a1/x", {}, False),  # resources are case-sensitive
    ("s3:GetObject", "arn:aws:s3:::other-bucket/agents/a1/x", {}, False),
    ("s3:GetObject", "arn:aws:s3:::bucket-2/agents/a1/x", {}, False),
    ("s3:ListBucket", B, {"s3:prefix": "agents/"}, False),
    ("s3:ListBucket", B, {"s3:prefix": "agents/a10/"}, False),
    ("s3:ListBucket", B, {}, False),
    ("s3:ListBucket", "arn:aws:s3:::other-bucket", {"s3:prefix": "agents/a1/"}, False),
    ("s3:PutBucketPolicy", B, {}, False),
    ("s3:GetObjectAcl", f"{B}/agents/a1/x", {}, False),
    ("iam:PassRole", "*", {}, False),
])
def test_evaluator_on_the_s3_policy(action: str, resource: str, context: dict, allowed: bool) -> None:
    assert evaluate(s3_policy("bucket/agents/a1/"), action, resource, context) is allowed


def test_evaluator_semantics() -> None:
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::b/?.txt"},
        {"Effect": "Deny", "Action": "*", "Resource": "arn:aws:s3:::b/x.txt"},
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::b",
         "Condition": {"StringEquals": {"s3:prefix": ["exact/"]}, "StringLike": {"s3:delimiter": "/"}}},
    ]}
    assert evaluate(policy, "s3:GetObject", "arn:aws:s3:::b/a.txt")
    assert not evaluate(policy, "s3:GetObject", "arn:aws:s3:::b/ab.txt")  # ? is one character
    assert not evaluate(policy, "s3:GetObject", "arn:aws:s3:::b/x.txt")  # explicit deny wins
    assert evaluate(policy, "s3:ListBucket", "arn:aws:s3:::b", {"S3:Prefix": "exact/", "s3:delimiter": "/"})
    assert not evaluate(policy, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "exact/x", "s3:delimiter": "/"})
    assert not evaluate(policy, "s3:ListBucket", "arn:aws:s3:::b", {"s3:prefix": "exact/"})  # all conditions must hold
    assert not evaluate({"Statement": []}, "s3:GetObject", "*")  # default deny


@pytest.mark.parametrize("statement", [
    {"Effect": "Allow", "NotAction": "s3:*", "Resource": "*"},
    {"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"IpAddress": {"aws:SourceIp": "1.2.3.4"}}},
    {"Effect": "Allow", "Action": "*", "Resource": "arn:aws:s3:::${aws:username}/*"},
    {"Effect": "Maybe", "Action": "*", "Resource": "*"},
])
def test_evaluator_refuses_what_it_does_not_understand(statement: dict) -> None:
    with pytest.raises(ValueError):
        evaluate({"Statement": [statement]}, "s3:GetObject", "arn:aws:s3:::b/x", {"aws:SourceIp": "1.2.3.4"})


# --- property: allowed iff the key starts with the granted prefix ----------------------------

SEGMENT = st.text(alphabet=string.ascii_lowercase + string.digits + "-_.", min_size=1, max_size=6).filter(
    lambda s: ".." not in s)
PREFIXES = st.lists(SEGMENT, min_size=1, max_size=3).map(lambda parts: "/".join(parts) + "/")
KEY_CHARS = string.ascii_lowercase[:4] + string.digits[:3] + "/-_.*?$ "


@st.composite
def prefix_and_key(draw: st.DrawFn) -> tuple[str, str]:
    prefix = draw(PREFIXES)
    how = draw(st.sampled_from(["inside", "near", "random"]))
    suffix = draw(st.text(alphabet=KEY_CHARS, max_size=12))
    if how == "inside":
        key = prefix + suffix
    elif how == "near":  # share all but the last few characters of the prefix
        cut = draw(st.integers(min_value=0, max_value=len(prefix)))
        key = prefix[:cut] + suffix
    else:
        key = draw(st.text(alphabet=KEY_CHARS + "abc", max_size=20))
    return prefix, key


@settings(max_examples=400, deadline=None)
@given(prefix_and_key())
def test_objects_allowed_iff_key_starts_with_prefix(case: tuple[str, str]) -> None:
    prefix, key = case
    policy = s3_policy(f"bucket/{prefix}")
    expected = key.startswith(prefix)
    for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"):
        assert evaluate(policy, action, f"{B}/{key}") is expected
    assert evaluate(policy, "s3:ListBucket", B, {"s3:prefix": key}) is expected
    assert evaluate(policy, "s3:GetObject", f"arn:aws:s3:::bucket2/{key}") is False
