"""IAM as AWS would enforce it, on the test's moto: each function's permissions come from
template.yaml itself.

    iam_harness.py bootstrap --endpoint URL
        Creates the harness's own admin user (it builds the test resources and the users) and
        turns moto's IAM enforcement on. Prints `ACCESS_KEY_ID SECRET_ACCESS_KEY`.

    iam_harness.py users --endpoint URL --stack FILE
        Transforms template.yaml with aws-sam-translator (SAM's own expansion of the policy
        templates), resolves every role's statements and every function's environment against
        the test stack described in FILE (JSON: stack name, account, region, parameters, and the
        physical names of the stack's resources), creates one IAM user per function role and one
        for OperatorPolicy with exactly those statements, and prints JSON:
        {"ingest": {"accessKeyId", "secretAccessKey", "environment", "eventSources"}, ...,
         "operator": {...}}.

moto evaluates policies its own way; the translation below makes it judge a call as AWS would:
- Resources: scripts/lib/moto_server.py names the table, topic or secret of a DynamoDB, SNS or
  Secrets Manager call (moto itself checks those against "*"); S3 (bucket and key) and SQS
  (queue ARN) moto checks with their resources already.
- Batch calls: AWS authorises a DynamoDB transaction by its items' actions (PutItem,
  UpdateItem, ...) and SQS's SendMessageBatch, DeleteMessageBatch and
  ChangeMessageVisibilityBatch as their single-message actions; moto asks for the batch action
  itself. Each is granted on exactly the resources where all the actions it stands for are.
- Managed policies are copied inline: the stack's own (JobsTablePolicy, AlertingPolicy) from the
  template, AWS's (AWSLambdaBasicExecutionRole, AWSLambdaSQSQueueExecutionRole) from moto's copy.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "template.yaml"

# The role each principal's user copies, by the name the Rust harness uses.
FUNCTION_ROLES = {
    "ingest": "IngestFunction",
    "submitter": "SubmitterFunction",
    "webhook": "WebhookFunction",
    "reconciler": "ReconcilerFunction",
}
OPERATOR_POLICY = "OperatorPolicy"

# What moto asks for a batch call, and the actions AWS authorises it by (module doc). Our
# transactions hold puts and updates with conditions only (shared/src/aws/dynamo/).
BATCH_ACTIONS = {
    "dynamodb:TransactWriteItems": ("dynamodb:PutItem", "dynamodb:UpdateItem"),
    "dynamodb:TransactGetItems": ("dynamodb:GetItem",),
    "sqs:SendMessageBatch": ("sqs:SendMessage",),
    "sqs:DeleteMessageBatch": ("sqs:DeleteMessage",),
    "sqs:ChangeMessageVisibilityBatch": ("sqs:ChangeMessageVisibility",),
    # AWS authorises PublishBatch as sns:Publish (row events).
    "sns:PublishBatch": ("sns:Publish",),
}


class HarnessError(Exception):
    pass


def boto_client(service: str, endpoint: str, key: str, secret: str):
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=key,
        aws_secret_access_key=secret,
    )


# ------------------------------------------------------------------ bootstrap


def bootstrap(endpoint: str) -> None:
    # Before enforcement any key is accepted; the admin is created with the dummy one.
    iam = boto_client("iam", endpoint, "test", "test")
    iam.create_user(UserName="harness-admin")
    iam.put_user_policy(
        UserName="harness-admin",
        PolicyName="everything",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="harness-admin")["AccessKey"]
    # text/plain: a form content type would leave moto an empty body.
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0",
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        if response.status != 200:
            raise HarnessError(f"moto refused to enforce IAM: HTTP {response.status}")
    print(key["AccessKeyId"], key["SecretAccessKey"])


# ------------------------------------------------------------------ transform


class NoManagedPolicyLookup:
    """The template names managed policies by ARN; nothing needs looking up."""

    def load(self):
        return {}


def transformed(parameters: dict) -> dict:
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    template = yaml_parse(TEMPLATE.read_text())
    # The transform only accepts code in S3; where the code lives changes no permission.
    template.setdefault("Globals", {}).setdefault("Function", {})["CodeUri"] = "s3://code/functions.zip"
    return transform(template, parameters, NoManagedPolicyLookup())


# ------------------------------------------------------------------ intrinsics


class Resolver:
    """Evaluates the intrinsic functions the transformed template uses, against the test stack."""

    def __init__(self, template: dict, stack: dict):
        self.template = template
        self.stack = stack
        defaults = {
            name: str(p["Default"])
            for name, p in template.get("Parameters", {}).items()
            if "Default" in p
        }
        self.parameters = {**defaults, **stack.get("parameters", {})}
        self.pseudo = {
            "AWS::StackName": stack["stackName"],
            "AWS::AccountId": stack["account"],
            "AWS::Region": stack["region"],
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        refs = self.stack["refs"]
        if name not in refs:
            raise HarnessError(f"the test stack has no physical value for Ref {name}")
        return refs[name]

    def get_att(self, logical: str, attribute: str) -> str:
        key = f"{logical}.{attribute}"
        attributes = self.stack["attributes"]
        if key not in attributes:
            raise HarnessError(f"the test stack has no value for Fn::GetAtt {key}")
        return attributes[key]

    def condition(self, name: str) -> bool:
        return bool(self.value(self.template.get("Conditions", {})[name]))

    def sub(self, text: str, variables: dict) -> str:
        out, i = [], 0
        while i < len(text):
            start = text.find("${", i)
            if start < 0:
                out.append(text[i:])
                break
            out.append(text[i:start])
            end = text.index("}", start)
            name = text[start + 2 : end]
            if name.startswith("!"):
                out.append("${" + name[1:] + "}")
            elif name in variables:
                out.append(str(self.value(variables[name])))
            elif "." in name:
                logical, attribute = name.split(".", 1)
                out.append(self.get_att(logical, attribute))
            else:
                out.append(self.ref(name))
            i = end + 1
        return "".join(out)

    NO_VALUE = object()

    def value(self, node):
        if isinstance(node, list):
            values = [self.value(v) for v in node]
            return [v for v in values if v is not Resolver.NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (fn, arg), = node.items()
            if fn == "Ref":
                return Resolver.NO_VALUE if arg == "AWS::NoValue" else self.ref(arg)
            if fn == "Fn::GetAtt":
                logical, attribute = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.get_att(logical, attribute)
            if fn == "Fn::Sub":
                text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
                return self.sub(text, variables)
            if fn == "Fn::Join":
                return str(arg[0]).join(str(v) for v in self.value(arg[1]))
            if fn == "Fn::If":
                name, yes, no = arg
                return self.value(yes if self.condition(name) else no)
            if fn == "Fn::Equals":
                a, b = self.value(arg)
                return str(a) == str(b)
            if fn == "Fn::Not":
                return not self.value(arg[0])
            if fn == "Condition":
                return self.condition(arg)
            if fn.startswith("Fn::"):
                raise HarnessError(f"{fn} is not understood by the IAM harness")
        resolved = {k: self.value(v) for k, v in node.items()}
        return {k: v for k, v in resolved.items() if v is not Resolver.NO_VALUE}


# ------------------------------------------------------------------ policies


def managed_document(arn: str) -> dict:
    from moto.iam.aws_managed_policies import aws_managed_policies_data

    name = arn.rsplit("/", 1)[-1]
    policies = json.loads(aws_managed_policies_data)
    if name not in policies:
        raise HarnessError(f"managed policy {arn} is not known to moto")
    return policies[name]["Document"]


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def allows(statement: dict, action: str) -> bool:
    import fnmatch

    return statement.get("Effect") == "Allow" and any(
        fnmatch.fnmatchcase(action, pattern) for pattern in as_list(statement.get("Action", []))
    )


def for_moto(statements: list) -> list:
    """The statements, plus the batch actions moto asks for where AWS would allow them."""
    out = copy.deepcopy(statements)
    for statement in statements:
        for batch, singles in BATCH_ACTIONS.items():
            if not allows(statement, batch) and all(allows(statement, a) for a in singles):
                out.append({"Effect": "Allow", "Action": batch, "Resource": statement.get("Resource", "*")})
    return out


def role_statements(resources: dict, resolver: Resolver, function: str) -> list:
    role = resources.get(f"{function}Role")
    if role is None or role["Type"] != "AWS::IAM::Role":
        raise HarnessError(f"the transformed template has no role {function}Role")
    properties = role["Properties"]
    statements = []
    for policy in properties.get("Policies", []):
        statements += as_list(resolver.value(policy["PolicyDocument"])["Statement"])
    for arn in properties.get("ManagedPolicyArns", []):
        # The stack's own managed policies (a Ref to one) are read from the template.
        own = isinstance(arn, dict) and resources.get(arn.get("Ref", ""), {}).get("Type")
        if own == "AWS::IAM::ManagedPolicy":
            document = resources[arn["Ref"]]["Properties"]["PolicyDocument"]
            statements += as_list(resolver.value(document)["Statement"])
        else:
            statements += as_list(managed_document(resolver.value(arn))["Statement"])
    return statements


def function_environment(resources: dict, resolver: Resolver, function: str) -> dict:
    properties = resources[function]["Properties"]
    variables = properties.get("Environment", {}).get("Variables", {})
    return {name: str(value) for name, value in resolver.value(variables).items()}


def event_sources(resources: dict, resolver: Resolver, function: str) -> list:
    out = []
    for resource in resources.values():
        if resource["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        properties = resource["Properties"]
        if properties.get("FunctionName") != {"Ref": function}:
            continue
        out.append(
            {
                "queueArn": resolver.value(properties["EventSourceArn"]),
                "batchSize": properties.get("BatchSize", 10),
                "reportsBatchItemFailures": "ReportBatchItemFailures"
                in properties.get("FunctionResponseTypes", []),
            }
        )
    return out


def users(endpoint: str, stack_file: str) -> None:
    stack = json.loads(Path(stack_file).read_text())
    key, secret = os.environ["MOTO_IAM_ADMIN_KEY_ID"], os.environ["MOTO_IAM_ADMIN_SECRET"]
    template = transformed(stack.get("parameters", {}))
    resolver = Resolver(template, stack)
    resources = template["Resources"]

    principals = {}
    for name, function in FUNCTION_ROLES.items():
        principals[name] = {
            "statements": role_statements(resources, resolver, function),
            "environment": function_environment(resources, resolver, function),
            "eventSources": event_sources(resources, resolver, function),
        }
    operator = resources[OPERATOR_POLICY]["Properties"]["PolicyDocument"]
    principals["operator"] = {
        "statements": as_list(resolver.value(operator)["Statement"]),
        "environment": {},
        "eventSources": [],
    }

    iam = boto_client("iam", endpoint, key, secret)
    out = {}
    for name, principal in principals.items():
        user = f"{stack['stackName']}-{name}"
        iam.create_user(UserName=user)
        document = {
            "Version": "2012-10-17",
            "Statement": for_moto(principal["statements"]),
        }
        iam.put_user_policy(UserName=user, PolicyName="template", PolicyDocument=json.dumps(document))
        access = iam.create_access_key(UserName=user)["AccessKey"]
        out[name] = {
            "accessKeyId": access["AccessKeyId"],
            "secretAccessKey": access["SecretAccessKey"],
            "environment": principal["environment"],
            "eventSources": principal["eventSources"],
            "statements": principal["statements"],
        }
    json.dump(out, sys.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["bootstrap", "users"])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--stack", help="users: the test stack's names (JSON file)")
    args = parser.parse_args()
    os.environ.setdefault("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    try:
        if args.command == "bootstrap":
            bootstrap(args.endpoint)
        else:
            if not args.stack:
                parser.error("users needs --stack FILE")
            users(args.endpoint, args.stack)
    except HarnessError as e:
        print(f"iam_harness: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
