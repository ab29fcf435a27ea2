#!/usr/bin/env python3
"""Writes the signed webhook events in events/ (Lambda Function URL / API Gateway v2 shape).

They are signed with the documented test secret `whsec_test_pictify_batch` at a fixed time, so
the files stay stable in git. Signatures older than 300 s are refused by design, so tests and the
local invoke script re-sign them with the current time:

    scripts/sign-events.py                  # rewrite events/ at the fixed time
    scripts/sign-events.py --now --out DIR  # fresh copies signed now, for cargo lambda invoke
"""
import argparse, hashlib, hmac, json, os, time

SECRET = "whsec_test_pictify_batch"
FIXED_T = 1764331200  # 2025-11-28T12:00:00Z

BODIES = {
    "webhook-render-completed.json": ("render.completed", {
        "type": "image", "source": "api", "imageId": "img_0001",
        "url": "http://127.0.0.1:4010/images/img_0001.png", "width": 1200, "height": 630, "format": "png",
        "templateId": "tmpl_blog_card",
        "variables": {"title": "Getting Started with APIs", "author": "Alice", "publishDate": "2026-01-15"},
        "renderedAt": "2026-11-28T12:00:01Z"}),
    "webhook-render-failed.json": ("render.failed", {
        "type": "image", "source": "api", "templateId": "tmpl_blog_card",
        "errorCode": "IMAGE_FETCH_FAILED", "error": "IMAGE_FETCH_FAILED: could not load https://example.invalid/a.png",
        "variables": {"title": "Advanced JavaScript", "author": "Bob", "publishDate": "2026-01-20"}}),
    "webhook-batch-completed.json": ("batch.completed", {
        "batchId": "batch_0001", "templateUid": "tmpl_blog_card", "status": "partial",
        "totalCount": 2, "completedCount": 1, "failedCount": 1, "duration": 1500}),
}


def event(name, data, t):
    body = json.dumps({"event": name, "timestamp": "2026-11-28T12:00:02Z", "data": data}, separators=(",", ":"))
    v1 = hmac.new(SECRET.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/",
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": "abcdefghij.lambda-url.us-east-1.on.aws",
            "user-agent": "Pictify-Webhooks/1.0",
            "x-pictify-event": name,
            "x-pictify-delivery-id": "del_" + hashlib.sha256(body.encode()).hexdigest()[:16],
            "x-pictify-signature": f"t={t},v1={v1}",
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abcdefghij",
            "domainName": "abcdefghij.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abcdefghij",
            "http": {"method": "POST", "path": "/", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "Pictify-Webhooks/1.0"},
            "requestId": "c2f4a9a0-0000-4000-8000-000000000001",
            "routeKey": "$default",
            "stage": "$default",
            "time": "28/Nov/2026:12:00:02 +0000",
            "timeEpoch": t * 1000,
        },
        "body": body,
        "isBase64Encoded": False,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--now", action="store_true", help="sign with the current time")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "events"))
    args = ap.parse_args()
    t = int(time.time()) if args.now else FIXED_T
    os.makedirs(args.out, exist_ok=True)
    for file, (name, data) in BODIES.items():
        with open(os.path.join(args.out, file), "w") as f:
            json.dump(event(name, data, t), f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
