"""The role kill switch over boto3 IAM (`ledger.ports.RoleKillSwitch`, design §3 "Quarantine").

STS credentials cannot be revoked one by one. The kill switch puts the inline role policy
`agentkeys-kill-switch` on the mint's role: deny everything to sessions whose
`aws:TokenIssueTime` is before `not_before`. It hits every live session of the role, of every
tenant (they re-mint and get new credentials). The policy is overwritten with the newer time only
(two operators, or two replicas, never move it backwards). The broker's identity needs
`iam:GetRolePolicy` and `iam:PutRolePolicy` on the role.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ledger.ports import KILL_SWITCH_POLICY_NAME, StsError

from .sts import safe_message


def kill_switch_policy(not_before: str) -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AgentKeysKillSwitch",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"DateLessThan": {"aws:TokenIssueTime": not_before}},
        }],
    }


def role_name(role_arn: str) -> str:
    """`arn:aws:iam::123456789012:role/path/name` -> `name`."""
    if ":role/" not in role_arn:
        raise StsError("InvalidRequest", f"not an IAM role ARN: {role_arn[:120]}")
    return role_arn.split(":role/", 1)[1].rsplit("/", 1)[-1]


class BotoIamKillSwitch:
    def __init__(self, *, region: str, endpoint_url: str | None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, timeout_s: int = 10) -> None:
        session = boto3.session.Session(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key,
                                        region_name=region)
        self._client = session.client("iam", endpoint_url=endpoint_url, config=Config(
            region_name=region, connect_timeout=timeout_s, read_timeout=timeout_s,
            retries={"total_max_attempts": 2, "mode": "standard"}, user_agent_extra="agentkeys-broker"))

    @classmethod
    def from_sts_settings(cls, sts: Any, endpoint_url: str | None) -> BotoIamKillSwitch:
        return cls(region=sts.region, endpoint_url=endpoint_url, access_key_id=sts.access_key_id,
                   secret_access_key=sts.secret_access_key, timeout_s=max(5, sts.timeout_seconds))

    @property
    def client(self) -> Any:
        return self._client

    def current_not_before(self, role_arn: str) -> str | None:
        """The time of the role's kill switch, or None when it has none."""
        try:
            doc = self._client.get_role_policy(RoleName=role_name(role_arn), PolicyName=KILL_SWITCH_POLICY_NAME)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchEntity":
                return None
            raise _error(exc) from None
        except BotoCoreError as exc:
            raise _error(exc) from None
        policy = doc["PolicyDocument"]
        if isinstance(policy, str):
            from urllib.parse import unquote

            policy = json.loads(unquote(policy))
        try:
            return str(policy["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"])
        except (KeyError, IndexError, TypeError):
            return None

    def revoke_sessions_before(self, role_arn: str, not_before: str) -> None:
        current = self.current_not_before(role_arn)
        if current is not None and current >= not_before:  # same RFC 3339 shape: string order is time order
            return
        try:
            self._client.put_role_policy(RoleName=role_name(role_arn), PolicyName=KILL_SWITCH_POLICY_NAME,
                                         PolicyDocument=json.dumps(kill_switch_policy(not_before)))
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc) from None


def _error(exc: Exception) -> StsError:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return StsError(str(err.get("Code") or "ClientError"), safe_message(str(err.get("Message") or "IAM refused")))
    return StsError("Unreachable", f"IAM unreachable ({type(exc).__name__})")
