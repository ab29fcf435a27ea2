"""moto_server with DynamoDB requests handled one at a time.

moto runs each request on its own thread, and its TransactWriteItems is not
isolated: it deep-copies the table first and, when any condition fails,
restores that copy. A conditional transaction that loses a race therefore
rolls back the winner's write that landed in between - after the winner was
told it succeeded. Real DynamoDB never does that, and our exactly-once steps
(a chunk completed once, an alert raised once) rely on it. Measured: two
threads racing the same conditional transaction 400 times on a 1,000-item
table - plain moto let both win 8 times and lost 13 acknowledged writes;
with this lock, 0 of 400 went wrong. Serialising DynamoDB calls gives the atomicity and
isolation DynamoDB documents; every other service stays concurrent (SQS
long polls must not queue behind each other).

It also gives moto's IAM check the resource of a DynamoDB, SNS or Secrets Manager call. moto
checks those calls against "*", so under enforcement (scripts/lib/iam_harness.py) a policy
naming the table, topic or secret would deny them all, and one granting them on "*" would allow
any. With the resource named, a role is allowed exactly what its statements name, as in AWS.
(An unenforced moto never looks at it.)

Usage: same arguments as moto_server.
"""

import json
import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.iam.access_control import IAMRequestBase
from moto.secretsmanager.responses import SecretsManagerResponse
from moto.server import main
from moto.sns.responses import SNSResponse

_dynamodb = threading.Lock()
_call_action = DynamoHandler.call_action


def _serialised_call_action(self):
    with _dynamodb:
        return _call_action(self)


DynamoHandler.call_action = _serialised_call_action


def _table_resource(self):
    # moto has parsed a DynamoDB body by now; parse it if not.
    body = self.body if isinstance(self.body, dict) else json.loads(self.body or "{}")
    name = body.get("TableName")
    if name is None and body.get("RequestItems"):
        name = next(iter(body["RequestItems"]))
    if name is None and body.get("TransactItems"):
        # Our transactions touch one table; AWS checks each item's, moto takes one resource.
        item = body["TransactItems"][0]
        name = next(iter(item.values())).get("TableName")
    if name is None:
        return "*"
    return f"arn:aws:dynamodb:{self.region}:{self.current_account}:table/{name}"


def _resource_from(compute):
    def _determine_resource(self):
        try:
            return compute(self) or "*"
        except Exception:  # an unparsable request is refused by moto itself
            return "*"

    return _determine_resource


DynamoHandler._determine_resource = _resource_from(_table_resource)
SNSResponse._determine_resource = _resource_from(lambda self: self._get_param("TopicArn"))
SecretsManagerResponse._determine_resource = _resource_from(lambda self: self._get_param("SecretId"))

_check_action_permitted = IAMRequestBase.check_action_permitted


def _logged_check_action_permitted(self, resource):
    """Names every refusal in the log: who, what, on which resource (moto's answer does not)."""
    try:
        return _check_action_permitted(self, resource)
    except Exception:
        user = getattr(getattr(self, "_access_key", None), "arn", "?")
        print(f"IAM DENIED {user} {self._action} on {resource}", file=sys.stderr, flush=True)
        raise


IAMRequestBase.check_action_permitted = _logged_check_action_permitted

_check_signature = IAMRequestBase.check_signature


def _check_signature_unless_reencoded(self):
    """moto checks a signature over its own re-encoding of a form body, which differs from the
    Rust SDK's for SNS messages with non-ASCII or JSON text (our alerts, row events): skip that
    check for sns:Publish and sns:PublishBatch alone. The access key still names the user, and
    the action check still runs."""
    if self._action in ("sns:Publish", "sns:PublishBatch"):
        return None
    try:
        return _check_signature(self)
    except Exception as e:
        print(f"IAM SIGNATURE REFUSED {self._action}: {e!r}", file=sys.stderr, flush=True)
        raise


IAMRequestBase.check_signature = _check_signature_unless_reencoded

if __name__ == "__main__":
    main(sys.argv[1:])
