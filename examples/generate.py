#!/usr/bin/env python3
"""Regenerates the example datasets and product images deterministically (no dependencies).

    python3 examples/generate.py
"""
import csv
import random
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
rng = random.Random(20261128)

ADJECTIVES = ["Practical", "Gentle", "Fearless", "Quiet", "Modern", "Hands-on", "Honest", "Tiny", "Serverless", "Pragmatic"]
TOPICS = ["Rust", "Image Pipelines", "Webhooks", "Idempotency", "DynamoDB", "Batch Rendering", "CSV Parsing",
          "Retries", "Observability", "Templates", "Rate Limits", "SQS"]
FORMS = ["A {a} Guide to {t}", "{t} in Practice", "What I Learned About {t}", "{a} {t}", "Ten Lessons on {t}",
         "{t}: The {a} Way", "Why {t} Matters"]
FIRST = ["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Alan", "Hedy", "Edsger", "Radia"]
LAST = ["Lovelace", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie", "Allen", "Turing", "Lamarr",
        "Dijkstra", "Perlman"]


def blog_posts(n=200):
    rows = []
    for i in range(n):
        title = rng.choice(FORMS).format(a=rng.choice(ADJECTIVES), t=rng.choice(TOPICS))
        rows.append({
            "title": f"{title} (part {i % 7 + 1})",
            "author": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
            "publishDate": f"2026-{i % 12 + 1:02d}-{i % 28 + 1:02d}",
        })
    return rows


def certificates(n=50):
    events = ["RustConf 2026", "Serverless Days", "Pictify Summit", "Data Pipelines Meetup"]
    return [{
        "recipientName": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
        "eventName": rng.choice(events),
        "eventDate": f"2026-{i % 12 + 1:02d}-{i % 27 + 1:02d}",
        "certificateId": f"CERT-{2026000 + i}",
    } for i in range(n)]


def png(path, width, height, rgb):
    """A solid-colour PNG with a lighter diagonal band, written by hand."""
    raw = bytearray()
    for y in range(height):
        raw.append(0)
        for x in range(width):
            band = abs(x - y) < width // 6
            raw.extend(min(255, c + 60) if band else c for c in rgb)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b""))


def products(n=100, images=12, missing_every=25):
    colours = [(200, 60, 60), (60, 140, 200), (80, 170, 90), (220, 170, 40), (140, 80, 190), (40, 160, 160)]
    for i in range(images):
        png(HERE / "images" / f"product-{i:02d}.png", 96, 96, colours[i % len(colours)])
    nouns = ["Mug", "Notebook", "Backpack", "Lamp", "Headphones", "Keyboard", "Water Bottle", "Desk Mat", "Sticker Pack"]
    badges = ["", "", "New", "Bestseller", "Limited"]
    rows = []
    for i in range(n):
        price = rng.randrange(900, 15000) / 100
        on_sale = i % 3 == 0
        original = round(price * 1.25, 2) if on_sale else ""
        # Every 25th row names an image that does not exist: the IMAGE_FETCH_FAILED path.
        image = f"images/missing-{i:03d}.png" if i % missing_every == missing_every - 1 else f"images/product-{i % images:02d}.png"
        rows.append({
            "productName": f"{rng.choice(ADJECTIVES)} {rng.choice(nouns)}",
            "price": f"{price:.2f}",
            "originalPrice": f"{original:.2f}" if original != "" else "",
            "discount": "20%" if on_sale else "",
            "imageUrl": image,
            "rating": f"{rng.randrange(30, 51) / 10:.1f}",
            "reviewCount": str(rng.randrange(0, 2000)),
            "badge": rng.choice(badges),
        })
    return rows


def write(name, rows):
    with open(HERE / name, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    (HERE / "images").mkdir(exist_ok=True)
    write("blog-posts.csv", blog_posts())
    write("certificates.csv", certificates())
    write("products.csv", products())
