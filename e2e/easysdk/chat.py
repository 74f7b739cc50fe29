"""Drives the official Python EasySDK (wukong-easy-sdk 0.1.0) against a Ruyi server.

Usage: python chat.py WS_URL [CA_FILE]

CA_FILE: a PEM file of the CA that signed a wss:// server's certificate (the SDK's
`ca_file` option).

Users ann and bo (tokens t-ann, t-bo, device flag 2) and group g (ann, bo and the
binary-protocol user cy) must exist. Prints one JSON object per line on stdout:
  {"step": "connected"}                       both SDK users are logged in
  {"step": "...", ...}                          what each step saw
  {"step": "done"}                             every step passed
The Rust test (tests/easysdk.rs) reads these lines; after "connected" it has cy send
"from cy" to ann over the binary protocol, and it checks that cy receives bo's group
message.
"""

import asyncio
import json
import sys

from wukong_easy_sdk import (
    AuthOptions,
    WKIM,
    WKIMChannelType,
    WKIMError,
    WKIMEvent,
    WKIMOptions,
)


def say(**fields):
    print(json.dumps(fields), flush=True)


async def next_message(queue, what, content):
    """The message whose payload content is `content`; others (the binary user's comes
    when it comes) wait in `queue.seen` for their turn."""
    for m in queue.seen:
        if m["payload"].get("content") == content:
            queue.seen.remove(m)
            return m
    try:
        async with asyncio.timeout(10):
            while True:
                m = await queue.get()
                if m["payload"].get("content") == content:
                    return m
                queue.seen.append(m)
    except TimeoutError:
        say(step="timeout", waiting_for=what)
        sys.exit(1)


async def main(url, ca_file=None):
    options = WKIMOptions(ca_file=ca_file) if ca_file else None
    inbox = {"ann": asyncio.Queue(), "bo": asyncio.Queue()}
    for q in inbox.values():
        q.seen = []
    users = {}
    for uid in ("ann", "bo"):
        im = WKIM.init(
            url, AuthOptions(uid=uid, token=f"t-{uid}", device_id=f"{uid}-py"), options
        )
        im.on(WKIMEvent.MESSAGE, lambda m, uid=uid: inbox[uid].put_nowait(m))
        await im.connect()
        users[uid] = im
    ann, bo = users["ann"], users["bo"]
    say(step="connected")

    # Person chat both ways between two EasySDK users.
    ack = await ann.send("bo", WKIMChannelType.PERSON, {"type": 1, "content": "hello bo"})
    got = await next_message(inbox["bo"], "ann -> bo", "hello bo")
    say(step="person", reasonCode=ack["reasonCode"], messageSeq=ack["messageSeq"],
        payload=got["payload"], fromUid=got["fromUid"], channelId=got["channelId"])
    ack = await bo.send("ann", WKIMChannelType.PERSON, {"type": 1, "content": "hi ann"})
    got = await next_message(inbox["ann"], "bo -> ann", "hi ann")
    say(step="reply", reasonCode=ack["reasonCode"], payload=got["payload"])

    # A group that a binary-protocol user is in too.
    ack = await bo.send("g", WKIMChannelType.GROUP, {"type": 1, "content": "to the group"})
    got = await next_message(inbox["ann"], "bo -> g", "to the group")
    say(step="group", reasonCode=ack["reasonCode"], payload=got["payload"],
        channelId=got["channelId"], channelType=got["channelType"])

    # From the binary-protocol user (the Rust test sends it after "connected").
    got = await next_message(inbox["ann"], "cy -> ann", "from cy")
    say(step="binary", payload=got["payload"], fromUid=got["fromUid"])

    await ann.ping()
    say(step="ping")

    # A wrong token is refused with the reason code, for good.
    wrong = WKIM.init(url, AuthOptions(uid="ann", token="wrong", device_id="other"), options)
    try:
        await wrong.connect()
        say(step="wrong-token", code=None)
    except WKIMError as e:
        say(step="wrong-token", code=e.code)
    finally:
        await wrong.destroy()

    for im in users.values():
        await im.destroy()
    say(step="done")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
