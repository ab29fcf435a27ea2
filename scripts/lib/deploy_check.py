#!/usr/bin/env python3
"""Transform the SAM template with aws-sam-translator, deploy it with CreateStack into a
moto server's CloudFormation, and check the resource wiring with boto3 against moto.

    python deploy_check.py --endpoint http://127.0.0.1:PORT [--template template.yaml]

scripts/test runs it against its moto before the Rust suite. moto's CloudFormation has no model
for some types (secrets, the function URL, alarms, EventInvokeConfig): those nothing refers to
are skipped, those referred to are stood in for (secrets created through the API first, a
placeholder URL), and what moto drops silently (bucket notifications, LoggingConfig, alarm
actions) is checked on the transformed template instead.

Exit 0 when every check passes, 1 when a check fails, 2 when the stack cannot be deployed.
Never talks to AWS: the endpoint must be a local moto server (fake credentials are forced).
"""
import argparse
import ast
import copy
import fnmatch
import io
import json
import os
import re
import sys
import time
import uuid
import zipfile

for _k, _v in dict(AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID="test",
                   AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1").items():
    os.environ[_k] = _v
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_SESSION_TOKEN", None)

import boto3  # noqa: E402

REGION = "us-east-1"
CODE_BUCKET, CODE_KEY = "code-bucket", "code.zip"
CAPS = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]

# Types in this template that moto 5.2.5's CloudFormation has no model for (it logs
# "No Moto CloudFormation support for <type>", skips the resource, and a Ref to it resolves
# to None).  --detect-unsupported recomputes this from the installed moto instead.
MOTO_UNSUPPORTED = {
    "AWS::SecretsManager::Secret", "AWS::Lambda::Url", "AWS::Lambda::EventInvokeConfig",
    "AWS::CloudWatch::Alarm", "AWS::SNS::Subscription",
}
PLACEHOLDER_ARN = "arn:aws:placeholder:us-east-1:123456789012:removed/{}"

FUNCTIONS = ["IngestFunction", "SubmitterFunction", "WebhookFunction", "ReconcilerFunction"]
# env var -> logical id whose Ref value it must carry
ENV_WIRING = {"TABLE_NAME": "JobsTable", "QUEUE_URL": "WorkQueue", "STEP_QUEUE_URL": "StepQueue",
              "ALERT_TOPIC_ARN": "AlertTopic", "SECRET_ARN": "StackSecret", "ALERT_SECRET_ARN": "AlertSecret"}
# every function must have these (SECRET_ARN only where the template sets it)
ENV_REQUIRED = {"TABLE_NAME", "QUEUE_URL", "STEP_QUEUE_URL", "ALERT_TOPIC_ARN"}
# role grants beyond the common table/queues/topic/key/secrets ones
ROLE_EXTRA = {"IngestFunction": [("s3:PutObject", "{bucket}/work/x"), ("s3:PutObject", "{bucket}/results/x"),
                                 ("s3:GetObject", "{bucket}/results/x"), ("s3:GetObject", "{bucket}/work/x")],
              "SubmitterFunction": [("s3:GetObject", "{bucket}/work/x"), ("sqs:ChangeMessageVisibility", "{work_queue}")],
              "WebhookFunction": [("s3:GetObject", "{bucket}/work/x"), ("s3:PutObject", "{bucket}/work/x")],
              "ReconcilerFunction": [("s3:GetObject", "{bucket}/work/x"), ("s3:PutObject", "{bucket}/work/x")]}
# queue -> (function, BatchSize, FunctionResponseTypes, MaximumConcurrency or None)
ESM_WIRING = {"StepQueue": ("IngestFunction", 1, ["ReportBatchItemFailures"], None),
              "WorkQueue": ("SubmitterFunction", 10, ["ReportBatchItemFailures"], 2)}
# queue -> maxReceiveCount (template default parameters)
REDRIVE = {"WorkQueue": 10, "StepQueue": 5}


# --------------------------------------------------------------------------- output
# --quiet: failures and the summary only (scripts/test).
QUIET = False


class Report:
    def __init__(self):
        self.passed = self.failed = 0

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        if not ok or not QUIET:
            print(f"  [{'PASS' if ok else 'FAIL'}] {what}" + (f"  ({detail})" if detail else ""))
        return ok

    def info(self, msg):
        if not QUIET:
            print(f"  [info] {msg}")


def section(title):
    if not QUIET:
        print(f"\n== {title}")


# --------------------------------------------------------------------------- transform
def sam_transform(path):
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    class NoManagedPolicies:
        def load(self):
            return {}

    with open(path) as fh:
        tpl = yaml_parse(fh.read())
    tpl.setdefault("Globals", {}).setdefault("Function", {})["CodeUri"] = f"s3://{CODE_BUCKET}/{CODE_KEY}"
    return transform(tpl, {}, NoManagedPolicies())


def references(node, found):
    """Collect logical ids referenced by Ref / Fn::GetAtt / Fn::Sub / DependsOn."""
    if isinstance(node, dict):
        if "Ref" in node and isinstance(node["Ref"], str):
            found.add(node["Ref"])
        if "Fn::GetAtt" in node:
            ga = node["Fn::GetAtt"]
            found.add(ga[0] if isinstance(ga, list) else ga.split(".")[0])
        if "Fn::Sub" in node:
            s = node["Fn::Sub"]
            for name in re.findall(r"\$\{([^}!]+)\}", s if isinstance(s, str) else s[0]):
                found.add(name.split(".")[0])
        for v in node.values():
            references(v, found)
    elif isinstance(node, list):
        for v in node:
            references(v, found)
    return found


def strip_resources(tpl, remove, values):
    """Drop `remove` logical ids; replace Ref/GetAtt/${} to them with values[lid] (str or
    {attr: str, "Ref": str}) or a placeholder ARN; drop them from DependsOn."""
    t = copy.deepcopy(tpl)
    for lid in remove:
        t["Resources"].pop(lid, None)

    def val(lid, attr=None):
        v = values.get(lid, PLACEHOLDER_ARN.format(lid))
        if isinstance(v, dict):
            return v.get(attr or "Ref", PLACEHOLDER_ARN.format(f"{lid}/{attr}"))
        return v

    def walk(x):
        if isinstance(x, dict):
            if set(x) == {"Ref"} and x["Ref"] in remove:
                return val(x["Ref"])
            if set(x) == {"Fn::GetAtt"}:
                ga = x["Fn::GetAtt"]
                ga = ga if isinstance(ga, list) else ga.split(".", 1)
                if ga[0] in remove:
                    return val(ga[0], ga[1])
            if set(x) == {"Fn::Sub"}:
                s = x["Fn::Sub"]
                body = s if isinstance(s, str) else s[0]

                def rep(m):
                    lid, _, attr = m.group(1).partition(".")
                    return val(lid, attr or None) if lid in remove else m.group(0)
                body = re.sub(r"\$\{([^}!]+)\}", rep, body)
                return {"Fn::Sub": body if isinstance(s, str) else [body, walk(s[1])]}
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    for r in t["Resources"].values():
        if "DependsOn" in r:
            dep = r["DependsOn"]
            dep = [d for d in ([dep] if isinstance(dep, str) else dep) if d not in remove]
            if dep:
                r["DependsOn"] = dep
            else:
                del r["DependsOn"]
    t["Resources"] = walk(t["Resources"])
    if "Outputs" in t:
        t["Outputs"] = walk(t["Outputs"])
    return t


# --------------------------------------------------------------------------- helpers
def policy_doc(raw):
    """moto returns inline policies created by CloudFormation as a Python repr string."""
    if isinstance(raw, dict):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return ast.literal_eval(raw)


def statements(doc):
    st = doc.get("Statement", [])
    return st if isinstance(st, list) else [st]


def as_list(x):
    return x if isinstance(x, list) else [x]


def grants(docs, action, resource):
    """Some Allow statement covers this concrete action on this concrete resource (wildcards)."""
    for doc in docs:
        for s in statements(doc):
            if s.get("Effect") != "Allow":
                continue
            acts, ress = as_list(s.get("Action", [])), as_list(s.get("Resource", []))
            if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in acts) and \
                    any(fnmatch.fnmatchcase(resource, r) for r in ress):
                return True
    return False


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True, help="moto server URL, e.g. http://127.0.0.1:5000")
    ap.add_argument("--template", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "template.yaml"),
                    help="SAM template (YAML); default: the repository's template.yaml")
    ap.add_argument("--stack-name", default=None, help="default: pb-<random>")
    ap.add_argument("--detect-unsupported", action="store_true",
                    help="ask the installed moto which resource types it cannot create (+~3 s)")
    ap.add_argument("--save-template", help="write the template actually deployed here")
    ap.add_argument("--quiet", action="store_true", help="print failures and the summary only")
    args = ap.parse_args()
    global QUIET
    QUIET = args.quiet
    if not re.match(r"^https?://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?/?$", args.endpoint):
        sys.exit("refusing: --endpoint must be a local moto server (127.0.0.1/localhost)")
    stack = args.stack_name or f"pb-{uuid.uuid4().hex[:6]}"
    rep = Report()
    t_start = time.monotonic()
    cli = lambda svc: boto3.client(svc, endpoint_url=args.endpoint, region_name=REGION)  # noqa: E731

    # ------------------------------------------------------------------ 1. transform
    section("1. SAM transform")
    t0 = time.monotonic()
    cfn = sam_transform(args.template)
    t_transform = time.monotonic() - t0
    types = {lid: r["Type"] for lid, r in cfn["Resources"].items()}
    print(f"  {len(types)} CloudFormation resources in {t_transform:.2f}s")

    unsupported = set(MOTO_UNSUPPORTED)
    if args.detect_unsupported:
        from moto.cloudformation.parsing import NULL_MODELS, get_model_map
        unsupported = {t for t in set(types.values())
                       if t not in get_model_map() and t not in NULL_MODELS and not t.startswith("Custom::")}
    unsup_ids = {lid for lid, t in types.items() if t in unsupported}
    referenced = set()
    for lid, r in cfn["Resources"].items():
        if lid not in unsup_ids:
            references(r, referenced)
    references(cfn.get("Outputs", {}), referenced)
    # Unsupported AND referenced: a Ref to it resolves to None (IAM statement loses its Resource ->
    # MalformedPolicyDocument), a GetAtt in Outputs crashes moto (HTTP 500). Remove those.
    remove = sorted(unsup_ids & referenced)
    skipped = sorted(unsup_ids - referenced)

    # ------------------------------------------------------------------ 2. deploy
    section("2. Deploy into moto CloudFormation")
    t0 = time.monotonic()
    s3 = cli("s3")
    try:
        s3.create_bucket(Bucket=CODE_BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("bootstrap", "#!/bin/sh\necho placeholder\n")
    s3.put_object(Bucket=CODE_BUCKET, Key=CODE_KEY, Body=buf.getvalue())

    values = {}
    for lid in remove:
        if types[lid] == "AWS::SecretsManager::Secret":
            # Stand-in: create the secret through the Secrets Manager API, so SECRET_ARN and the
            # policies get a real (moto) ARN instead of a placeholder.
            props = cfn["Resources"][lid].get("Properties", {})
            values[lid] = cli("secretsmanager").create_secret(
                Name=f"{stack}-{lid}", Description=str(props.get("Description", ""))[:2048],
                SecretString=props.get("SecretString", "{}"))["ARN"]
        elif types[lid] == "AWS::Lambda::Url":
            values[lid] = {"FunctionUrl": "https://placeholder.lambda-url.us-east-1.on.aws/",
                           "Ref": PLACEHOLDER_ARN.format(lid)}
        rep.info(f"removed {lid} ({types[lid]}): unsupported by moto and referenced; "
                 f"references -> {values.get(lid, PLACEHOLDER_ARN.format(lid))}")
    for lid in skipped:
        rep.info(f"left in {lid} ({types[lid]}): unsupported, unreferenced -> moto skips it")
    deployed = strip_resources(cfn, set(remove), values)
    if args.save_template:
        with open(args.save_template, "w") as fh:
            json.dump(deployed, fh, indent=1, default=str)

    cf = cli("cloudformation")
    try:
        cf.create_stack(StackName=stack, TemplateBody=json.dumps(deployed, default=str), Capabilities=CAPS)
    except Exception as e:  # moto creates resources synchronously inside CreateStack
        print(f"  CreateStack failed: {type(e).__name__}: {e}")
        return 2
    status = None
    for _ in range(120):
        s = cf.describe_stacks(StackName=stack)["Stacks"][0]
        status = s["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            break
        time.sleep(0.25)
    t_deploy = time.monotonic() - t0
    events = cf.describe_stack_events(StackName=stack)["StackEvents"]
    failed_ev = [e for e in events if "FAILED" in e["ResourceStatus"]]
    rep.check(status == "CREATE_COMPLETE", f"stack {stack} status", f"{status}, {t_deploy:.2f}s")
    for e in failed_ev:
        print(f"    event: {e['LogicalResourceId']} {e['ResourceStatus']} {e.get('ResourceStatusReason')}")
    if status != "CREATE_COMPLETE":
        return 2

    # ------------------------------------------------------------------ 3. checks
    t0 = time.monotonic()
    res = {}
    paginator = cf.get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack):
        for r in page["StackResourceSummaries"]:
            res[r["LogicalResourceId"]] = r
    phys = {lid: r.get("PhysicalResourceId") for lid, r in res.items()}
    phys.update({lid: (v if isinstance(v, str) else v["Ref"]) for lid, v in values.items()})
    outputs = {o["OutputKey"]: o["OutputValue"] for o in s.get("Outputs", [])}

    section("3a. Stack resources")
    expected_present = set(types) - set(remove)
    missing = sorted(lid for lid in expected_present if lid not in res)
    cond_off = sorted(lid for lid in missing if "Condition" in cfn["Resources"][lid])
    silently = sorted(set(missing) - set(cond_off))
    print(f"  {len(res)} resources listed; not listed: {len(missing)}")
    for lid in cond_off:
        rep.info(f"{lid} ({types[lid]}) not created: Condition {cfn['Resources'][lid]['Condition']} is false")
    rep.check(set(silently) <= set(skipped), "every resource moto did not list is an unsupported type",
              ", ".join(f"{lid}:{types[lid]}" for lid in silently))
    rep.check(all(r["ResourceStatus"] == "CREATE_COMPLETE" for r in res.values()), "all listed resources CREATE_COMPLETE")

    lam, sqs, iam, ddb = cli("lambda"), cli("sqs"), cli("iam"), cli("dynamodb")
    sns, sm, logs, events_c = cli("sns"), cli("secretsmanager"), cli("logs"), cli("events")

    section("3b. Referenced resources exist in their services")
    tbl = ddb.describe_table(TableName=phys["JobsTable"])["Table"]
    rep.check(tbl["TableStatus"] == "ACTIVE", "JobsTable exists", tbl["TableName"])
    qarn = {}
    for q in ["WorkQueue", "StepQueue", "WorkDeadLetterQueue"]:
        qarn[q] = sqs.get_queue_attributes(QueueUrl=phys[q], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        rep.check(True, f"{q} exists", qarn[q])
    topic_attrs = sns.get_topic_attributes(TopicArn=phys["AlertTopic"])["Attributes"]
    key_id = phys["AlertTopicKey"]
    # DescribeKey on a CloudFormation-created key is an HTTP 500 in moto (KeyPolicy kept as a dict)
    key_arn = next((k["KeyArn"] for k in cli("kms").list_keys()["Keys"] if k["KeyId"] == key_id), None)
    rep.check(key_arn is not None, "AlertTopicKey exists", str(key_arn))
    rep.check(topic_attrs.get("KmsMasterKeyId") in (key_id, key_arn), "AlertTopic encrypted with AlertTopicKey",
              topic_attrs.get("KmsMasterKeyId"))
    for lid in [l for l in remove if types[l] == "AWS::SecretsManager::Secret"]:
        sec = sm.describe_secret(SecretId=phys[lid])
        rep.check(sec["ARN"] == phys[lid], f"{lid} exists (stand-in created through Secrets Manager)", sec["ARN"])

    section("3c. Function environment wiring")
    fn_cfg, fn_env, nonstr = {}, {}, set()
    for f in FUNCTIONS:
        cfg = lam.get_function(FunctionName=phys[f])
        fn_cfg[f] = cfg
        env = fn_env[f] = cfg["Configuration"].get("Environment", {}).get("Variables", {})
        tenv = cfn["Resources"][f]["Properties"].get("Environment", {}).get("Variables", {})
        # the brief's five: named variable must carry the Ref of the named resource
        for var, lid in ENV_WIRING.items():
            if var not in tenv:
                if var in ENV_REQUIRED:
                    rep.check(False, f"{f}: {var} set", "absent from the template")
                else:
                    rep.info(f"{f}: {var} not set by the template")
                continue
            rep.check(tenv[var] == {"Ref": lid} and str(env.get(var)) == phys[lid],
                      f"{f}: {var} = Ref {lid}", str(env.get(var)))
        # any other variable that is a Ref to a stack resource
        for var, v in tenv.items():
            if var not in ENV_WIRING and isinstance(v, dict) and v.get("Ref") in types:
                rep.check(str(env.get(var)) == phys[v["Ref"]], f"{f}: {var} = Ref {v['Ref']}", str(env.get(var)))
        nonstr |= {k for k, v in env.items() if not isinstance(v, str)}
    if nonstr:
        rep.info(f"moto returns non-string env values for {', '.join(sorted(nonstr))} (Number parameters; "
                 "real CloudFormation/Lambda give strings)")

    section("3d. Event source mappings")
    esms = []
    for page in lam.get_paginator("list_event_source_mappings").paginate():
        esms += page["EventSourceMappings"]
    fn_arn = {f: fn_cfg[f]["Configuration"]["FunctionArn"] for f in FUNCTIONS}
    ours = [m for m in esms if m["FunctionArn"] in fn_arn.values()]
    for q, (f, bs, frt, maxc) in ESM_WIRING.items():
        ms = [m for m in ours if m["EventSourceArn"] == qarn[q]]
        ok = len(ms) == 1 and ms[0]["FunctionArn"] == fn_arn[f]
        rep.check(ok, f"{q} feeds {f}", f"found {[m['FunctionArn'].split(':')[-1] for m in ms]}")
        if ms:
            m = ms[0]
            rep.check(m.get("BatchSize") == bs, f"{q} mapping BatchSize == {bs}", str(m.get("BatchSize")))
            rep.check(m.get("FunctionResponseTypes") == frt, f"{q} mapping FunctionResponseTypes == {frt}",
                      str(m.get("FunctionResponseTypes")))
            if maxc is not None:
                got = m.get("ScalingConfig", {}).get("MaximumConcurrency")
                rep.check(got == maxc, f"{q} mapping ScalingConfig.MaximumConcurrency == {maxc}", str(got))
    rep.check(len(ours) == len(ESM_WIRING), f"exactly {len(ESM_WIRING)} mappings for this stack's functions",
              str(len(ours)))

    section("3e. Queue redrive")
    for q, mrc in REDRIVE.items():
        rp = json.loads(sqs.get_queue_attributes(QueueUrl=phys[q], AttributeNames=["RedrivePolicy"])
                        ["Attributes"].get("RedrivePolicy", "{}"))
        rep.check(rp.get("deadLetterTargetArn") == qarn["WorkDeadLetterQueue"],
                  f"{q} RedrivePolicy -> WorkDeadLetterQueue", rp.get("deadLetterTargetArn", "none"))
        rep.check(int(rp.get("maxReceiveCount", -1)) == mrc, f"{q} maxReceiveCount == {mrc}",
                  str(rp.get("maxReceiveCount")))

    section("3f. IAM roles and their policies")
    bucket_arn = f"arn:aws:s3:::{phys['UploadBucket']}"
    table_arn = tbl["TableArn"]
    stack_policy_arn = {phys[lid]: lid for lid, t in types.items() if t == "AWS::IAM::ManagedPolicy" and lid in phys}
    for f in FUNCTIONS:
        role_lid = f + "Role"
        role_name = phys[role_lid]
        role = iam.get_role(RoleName=role_name)["Role"]
        rep.check(fn_cfg[f]["Configuration"]["Role"] == role["Arn"], f"{f} runs as {role_lid}")
        names = iam.list_role_policies(RoleName=role_name)["PolicyNames"]
        docs = [policy_doc(iam.get_role_policy(RoleName=role_name, PolicyName=n)["PolicyDocument"]) for n in names]
        rep.check(len(names) > 0, f"{role_lid} has inline policies", ", ".join(names))
        # moto ignores AWS::IAM::Role ManagedPolicyArns: read the attachments from the template,
        # resolve them against what moto created, and take the documents from moto.
        attached = iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
        tmpl_mp = cfn["Resources"][role_lid]["Properties"].get("ManagedPolicyArns", [])
        mp_lids = [m["Ref"] for m in tmpl_mp if isinstance(m, dict) and "Ref" in m]
        aws_mp = [m.split("/")[-1] for m in tmpl_mp if isinstance(m, str)]
        for lid in mp_lids:
            pol = iam.get_policy(PolicyArn=phys[lid])["Policy"]
            ver = iam.get_policy_version(PolicyArn=phys[lid], VersionId=pol["DefaultVersionId"])["PolicyVersion"]
            docs.append(policy_doc(ver["Document"]))
        if mp_lids or aws_mp:
            rep.info(f"{role_lid}: template attaches {mp_lids + aws_mp}; moto attached {len(attached)} "
                     f"(stack policies' documents read from moto, attachment taken from the template)")
        wants = [("dynamodb:PutItem", table_arn), ("sqs:SendMessage", qarn["WorkQueue"]),
                 ("sqs:SendMessage", qarn["StepQueue"]), ("sns:Publish", phys["AlertTopic"]),
                 ("kms:GenerateDataKey", key_arn)]
        for var, v in fn_env[f].items():  # every secret a function is told about, it may read
            if var.endswith("SECRET_ARN"):
                wants.append(("secretsmanager:GetSecretValue", str(v)))
        wants += ROLE_EXTRA.get(f, [])
        wants = [(a, r.format(bucket=bucket_arn, work_queue=qarn["WorkQueue"])) for a, r in wants]
        missing_g = [f"{a} on {r.split(':')[-1]}" for a, r in wants if not grants(docs, a, r)]
        rep.check(not missing_g, f"{role_lid} grants " + ", ".join(sorted({a for a, _ in wants})),
                  f"missing {missing_g}" if missing_g else "")
    op = iam.get_policy(PolicyArn=phys["OperatorPolicy"])["Policy"]
    rep.check(op["Arn"] == outputs.get("OperatorPolicyArn"), "OperatorPolicy exists", op["PolicyName"])

    section("3g. Triggers, permissions, concurrency, logs, outputs")
    def perm_principals(f):
        try:
            pol = json.loads(lam.get_policy(FunctionName=phys[f])["Policy"])
        except lam.exceptions.ResourceNotFoundException:
            return []
        return [(s.get("Principal", {}).get("Service") if isinstance(s.get("Principal"), dict) else s.get("Principal"))
                for s in pol["Statement"]]
    rep.check("s3.amazonaws.com" in perm_principals("IngestFunction"), "IngestFunction invokable by S3")
    rep.check("events.amazonaws.com" in perm_principals("ReconcilerFunction"), "ReconcilerFunction invokable by EventBridge")
    rep.check("*" in perm_principals("WebhookFunction"), "WebhookFunction public URL permission")
    rule = phys["ReconcilerFunctionEvery5Minutes"]
    r = events_c.describe_rule(Name=rule)
    tg = events_c.list_targets_by_rule(Rule=rule)["Targets"]
    rep.check(r.get("ScheduleExpression") == "rate(5 minutes)" and [t["Arn"] for t in tg] == [fn_arn["ReconcilerFunction"]],
              "schedule rule rate(5 minutes) -> ReconcilerFunction")
    conc = lam.get_function_concurrency(FunctionName=phys["WebhookFunction"]).get("ReservedConcurrentExecutions")
    rep.check(conc == 50, "WebhookFunction reserved concurrency == 50", str(conc))
    groups = {g["logGroupName"]: g for g in logs.describe_log_groups(logGroupNamePrefix=f"/aws/lambda/{stack}-")["logGroups"]}
    for g in ["ingest", "submitter", "webhook", "reconciler"]:
        lg = groups.get(f"/aws/lambda/{stack}-{g}", {})
        rep.check(lg.get("retentionInDays") == 30, f"log group /aws/lambda/{stack}-{g} retention 30d",
                  str(lg.get("retentionInDays")))
    for k, o in cfn.get("Outputs", {}).items():
        v = o.get("Value")
        # A conditional output (RowEventsTopicArn) whose resource the default parameters leave out.
        if o.get("Condition") and isinstance(v, dict) and v.get("Ref") not in phys:
            continue
        if isinstance(v, dict) and v.get("Ref") in types:
            rep.check(outputs.get(k) == phys[v["Ref"]], f"output {k} = Ref {v['Ref']}", str(outputs.get(k)))

    section("3h. Not reproduced by moto - checked in the transformed template instead")
    R = cfn["Resources"]
    nc = R["UploadBucket"]["Properties"].get("NotificationConfiguration", {}).get("LambdaConfigurations", [])
    rep.check(len(nc) == 1 and nc[0]["Function"] == {"Fn::GetAtt": ["IngestFunction", "Arn"]}
              and nc[0]["Event"] == "s3:ObjectCreated:*", "[template] bucket ObjectCreated -> IngestFunction")
    bucket = R["UploadBucket"]["Properties"]
    rep.check(bucket.get("VersioningConfiguration", {}).get("Status") == "Enabled",
              "[template] bucket versioned (a dataset overwritten mid-job keeps its job's version)")
    block = bucket.get("PublicAccessBlockConfiguration", {})
    rep.check(all(block.get(k) is True for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls",
                                                   "RestrictPublicBuckets")),
              "[template] bucket public access blocked")
    rep.check(bool(bucket.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration")),
              "[template] bucket encrypted")
    for f, g in zip(FUNCTIONS, ["Ingest", "Submitter", "Webhook", "Reconciler"]):
        rep.check(R[f]["Properties"].get("LoggingConfig", {}).get("LogGroup") == {"Ref": f"{g}LogGroup"},
                  f"[template] {f} LoggingConfig.LogGroup -> {g}LogGroup")
    eic = [r for r in R.values() if r["Type"] == "AWS::Lambda::EventInvokeConfig"]
    rep.check(len(eic) == 1 and eic[0]["Properties"]["MaximumRetryAttempts"] == 0
              and eic[0]["Properties"]["FunctionName"] == {"Ref": "ReconcilerFunction"},
              "[template] ReconcilerFunction MaximumRetryAttempts 0")
    url = R.get("WebhookFunctionUrl", {}).get("Properties", {})
    rep.check(url.get("AuthType") == "NONE" and url.get("TargetFunctionArn") == {"Ref": "WebhookFunction"},
              "[template] WebhookFunction URL AuthType NONE")
    alarms = [r for r in R.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    rep.check(alarms and all(a["Properties"].get("AlarmActions") == [{"Ref": "AlertTopic"}] for a in alarms),
              f"[template] all {len(alarms)} alarms notify AlertTopic")
    t_checks = time.monotonic() - t0

    total = time.monotonic() - t_start
    print(f"\n== Summary: {rep.passed} passed, {rep.failed} failed; removed {remove or 'nothing'}; "
          f"moto skipped {skipped}")
    print(f"   time: transform {t_transform:.2f}s, deploy {t_deploy:.2f}s, checks {t_checks:.2f}s, total {total:.2f}s")
    return 0 if rep.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
