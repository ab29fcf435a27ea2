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

Usage: same arguments as moto_server.
"""

import sys
import threading

from moto.dynamodb.responses import DynamoHandler
from moto.server import main

_dynamodb = threading.Lock()
_call_action = DynamoHandler.call_action


def _serialised_call_action(self):
    with _dynamodb:
        return _call_action(self)


DynamoHandler.call_action = _serialised_call_action

if __name__ == "__main__":
    main(sys.argv[1:])
