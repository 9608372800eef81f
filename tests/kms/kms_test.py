#!/usr/bin/env python3
"""Quorumkey's AWS KMS endpoint spoken by boto3 and the AWS Encryption SDK.

Runs against a live cluster (cli/tests/kms.rs starts `qk dev up`, creates the
access keys with `qk kms credentials create` and runs this in a venv with
boto3 and aws-encryption-sdk). The AWS_* environment is the one
`qk kms credentials create` printed. Extra environment:

  QK_EXPIRED_KEY     "<access key id>:<secret>" of a key that has expired
  QK_REVOKED_KEY     "<access key id>:<secret>" of a revoked key
  QK_READER_KEY      "<access key id>:<secret>" of a principal with no data rights
  QK_OTHER_NODE_URL  another node's HTTPS API (where the key is not accepted)
  QK_BIN, QK_CWD     the qk binary and the directory of the cluster's profile
  QK_APPROVER_TOKEN  a token of an approver (key `gated` decrypts with approval)

Prints one line per check; exits 1 on the first failed check.
"""

import base64
import os
import re
import subprocess
import sys
import time
import traceback

import aws_encryption_sdk
import boto3
import botocore.exceptions
from aws_encryption_sdk import CommitmentPolicy

REGION = os.environ["AWS_DEFAULT_REGION"]


def fail(message: str) -> None:
    print(f"FAIL  {message}", flush=True)
    sys.exit(1)


def check(cond: bool, what: str, detail: object = "") -> None:
    if not cond:
        fail(f"{what}: {detail!r}")
    print(f"ok    {what}", flush=True)


def expect_error(code: str, what: str, fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        check(got == code, f"{what} is refused with {code}", f"{got}: {e}")
        return
    fail(f"{what} was accepted; expected {code}")


def client_with(key: str, endpoint: str = ""):
    access, secret = key.split(":", 1)
    return boto3.client(
        "kms",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        endpoint_url=endpoint or os.environ["AWS_ENDPOINT_URL_KMS"],
    )


def keys_and_data(kms) -> dict:
    made = kms.create_key(
        Description="orders",
        Tags=[{"TagKey": "team", "TagValue": "payments"}],
    )["KeyMetadata"]
    check(made["KeyState"] == "Enabled", "CreateKey makes an enabled key", made)
    check(made["Arn"].startswith(f"arn:aws:kms:{REGION}:"), "its ARN names the region", made["Arn"])
    key_id, arn = made["KeyId"], made["Arn"]
    alias = next(
        a["AliasName"] for a in kms.list_aliases()["Aliases"] if a["TargetKeyId"] == key_id
    )
    for ref in (key_id, arn, alias):
        got = kms.describe_key(KeyId=ref)["KeyMetadata"]
        check(got["KeyId"] == key_id and got["Description"] == "orders", f"DescribeKey by {ref}")
    listed = [k["KeyId"] for k in kms.list_keys()["Keys"]]
    check(key_id in listed, "ListKeys lists it")
    one = kms.list_keys(Limit=1)
    check(len(one["Keys"]) == 1, "ListKeys pages", one)
    tags = kms.list_resource_tags(KeyId=key_id)["Tags"]
    check(tags == [{"TagKey": "team", "TagValue": "payments"}], "CreateKey's tags", tags)
    kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "env", "TagValue": "prod"}])
    kms.untag_resource(KeyId=key_id, TagKeys=["team"])
    tags = kms.list_resource_tags(KeyId=key_id)["Tags"]
    check(tags == [{"TagKey": "env", "TagValue": "prod"}], "TagResource and UntagResource", tags)

    ctx = {"order": "42", "tenant": "acme"}
    enc = kms.encrypt(KeyId=alias, Plaintext=b"card 4111", EncryptionContext=ctx)
    check(enc["KeyId"] == arn, "Encrypt answers the key's ARN", enc["KeyId"])
    blob = enc["CiphertextBlob"]
    plain = kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx)
    check(plain["Plaintext"] == b"card 4111" and plain["KeyId"] == arn, "Decrypt without KeyId")
    plain = kms.decrypt(CiphertextBlob=blob, EncryptionContext=ctx, KeyId=arn)
    check(plain["Plaintext"] == b"card 4111", "Decrypt with KeyId")
    expect_error("InvalidCiphertextException", "Decrypt with another context",
                 kms.decrypt, CiphertextBlob=blob, EncryptionContext={"order": "43"})
    expect_error("InvalidCiphertextException", "Decrypt of garbage",
                 kms.decrypt, CiphertextBlob=b"not a ciphertext")

    other = kms.create_key(Description="archive")["KeyMetadata"]
    expect_error("IncorrectKeyException", "Decrypt naming another key",
                 kms.decrypt, CiphertextBlob=blob, EncryptionContext=ctx, KeyId=other["KeyId"])
    moved = kms.re_encrypt(
        CiphertextBlob=blob,
        SourceEncryptionContext=ctx,
        DestinationKeyId=other["KeyId"],
        DestinationEncryptionContext={"archived": "yes"},
    )
    check(moved["SourceKeyId"] == arn and moved["KeyId"] == other["Arn"], "ReEncrypt names both keys")
    plain = kms.decrypt(CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"archived": "yes"})
    check(plain["Plaintext"] == b"card 4111", "ReEncrypt's ciphertext decrypts under the new key")

    dk = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256", EncryptionContext=ctx)
    check(len(dk["Plaintext"]) == 32, "GenerateDataKey AES_256 is 32 bytes")
    again = kms.decrypt(CiphertextBlob=dk["CiphertextBlob"], EncryptionContext=ctx)["Plaintext"]
    check(again == dk["Plaintext"], "the data key decrypts to its plaintext")
    wrapped = kms.generate_data_key_without_plaintext(KeyId=key_id, NumberOfBytes=16)
    check("Plaintext" not in wrapped, "GenerateDataKeyWithoutPlaintext holds no plaintext")
    check(len(kms.decrypt(CiphertextBlob=wrapped["CiphertextBlob"])["Plaintext"]) == 16,
          "and decrypts to 16 bytes")
    expect_error("ValidationException", "a data key of 8 bytes",
                 kms.generate_data_key, KeyId=key_id, NumberOfBytes=8)
    rand = kms.generate_random(NumberOfBytes=48)["Plaintext"]
    check(len(rand) == 48, "GenerateRandom")
    return {"key_id": key_id, "arn": arn, "blob": blob, "ctx": ctx}


def aliases(kms, k: dict) -> None:
    kms.create_alias(AliasName="alias/orders", TargetKeyId=k["key_id"])
    enc = kms.encrypt(KeyId="alias/orders", Plaintext=b"via alias")
    check(enc["KeyId"] == k["arn"], "CreateAlias: Encrypt by the alias uses its key")
    listed = {a["AliasName"]: a["TargetKeyId"] for a in kms.list_aliases()["Aliases"]}
    check(listed.get("alias/orders") == k["key_id"], "ListAliases lists it", listed)
    expect_error("AlreadyExistsException", "a second alias/orders",
                 kms.create_alias, AliasName="alias/orders", TargetKeyId=k["key_id"])
    name = next(a for a, t in listed.items() if t == k["key_id"] and a != "alias/orders")
    expect_error("AlreadyExistsException", "an alias equal to a key's name",
                 kms.create_alias, AliasName=name, TargetKeyId=k["key_id"])
    other = kms.create_key(Description="orders v2")["KeyMetadata"]
    kms.update_alias(AliasName="alias/orders", TargetKeyId=other["KeyId"])
    enc = kms.encrypt(KeyId="alias/orders", Plaintext=b"via alias")
    check(enc["KeyId"] == other["Arn"], "UpdateAlias moves it to another key")
    kms.delete_alias(AliasName="alias/orders")
    expect_error("NotFoundException", "the deleted alias",
                 kms.encrypt, KeyId="alias/orders", Plaintext=b"x")
    expect_error("NotFoundException", "UpdateAlias of an alias that does not exist",
                 kms.update_alias, AliasName="alias/none", TargetKeyId=k["key_id"])
    expect_error("ValidationException", "DeleteAlias of a key's name",
                 kms.delete_alias, AliasName=name)


def rotation(kms, k: dict) -> None:
    status = kms.get_key_rotation_status(KeyId=k["key_id"])
    check(status["KeyRotationEnabled"] is False, "rotation is off at first", status)
    kms.enable_key_rotation(KeyId=k["key_id"], RotationPeriodInDays=90)
    status = kms.get_key_rotation_status(KeyId=k["key_id"])
    check(status["KeyRotationEnabled"] and status["RotationPeriodInDays"] == 90,
          "EnableKeyRotation sets a 90-day schedule", status)
    kms.disable_key_rotation(KeyId=k["key_id"])
    check(kms.get_key_rotation_status(KeyId=k["key_id"])["KeyRotationEnabled"] is False,
          "DisableKeyRotation")
    kms.rotate_key_on_demand(KeyId=k["key_id"])
    plain = kms.decrypt(CiphertextBlob=k["blob"], EncryptionContext=k["ctx"])["Plaintext"]
    check(plain == b"card 4111", "RotateKeyOnDemand keeps old ciphertexts decryptable")


def lifecycle(kms, k: dict) -> None:
    kms.disable_key(KeyId=k["key_id"])
    check(kms.describe_key(KeyId=k["key_id"])["KeyMetadata"]["KeyState"] == "Disabled", "DisableKey")
    expect_error("DisabledException", "Encrypt with a disabled key",
                 kms.encrypt, KeyId=k["key_id"], Plaintext=b"x")
    expect_error("DisabledException", "Decrypt under a disabled key",
                 kms.decrypt, CiphertextBlob=k["blob"], EncryptionContext=k["ctx"])
    kms.enable_key(KeyId=k["key_id"])
    check(kms.describe_key(KeyId=k["key_id"])["KeyMetadata"]["Enabled"], "EnableKey")

    expect_error("ValidationException", "a 3-day deletion window",
                 kms.schedule_key_deletion, KeyId=k["key_id"], PendingWindowInDays=3)
    sched = kms.schedule_key_deletion(KeyId=k["key_id"], PendingWindowInDays=7)
    check(sched["KeyState"] == "PendingDeletion" and sched["PendingWindowInDays"] == 7,
          "ScheduleKeyDeletion", sched)
    days = (sched["DeletionDate"].timestamp() - time.time()) / 86400
    check(6.9 < days < 7.1, "the deletion date is 7 days out", days)
    expect_error("KMSInvalidStateException", "Encrypt with a key pending deletion",
                 kms.encrypt, KeyId=k["key_id"], Plaintext=b"x")
    expect_error("KMSInvalidStateException", "Decrypt under a key pending deletion",
                 kms.decrypt, CiphertextBlob=k["blob"], EncryptionContext=k["ctx"])
    kms.cancel_key_deletion(KeyId=k["key_id"])
    state = kms.describe_key(KeyId=k["key_id"])["KeyMetadata"]["KeyState"]
    check(state == "Disabled", "CancelKeyDeletion leaves the key disabled, as AWS", state)
    kms.enable_key(KeyId=k["key_id"])
    plain = kms.decrypt(CiphertextBlob=k["blob"], EncryptionContext=k["ctx"])["Plaintext"]
    check(plain == b"card 4111", "the key decrypts again once enabled")


def refusals(kms, k: dict) -> None:
    expect_error("NotFoundException", "an unknown key id",
                 kms.describe_key, KeyId="00000000-0000-0000-0000-000000000000")
    expect_error("NotFoundException", "an unknown alias",
                 kms.encrypt, KeyId="alias/no-such-key", Plaintext=b"x")
    access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    forged = client_with(f"{access}:{secret[:-1]}{'0' if secret[-1] != '0' else '1'}")
    expect_error("InvalidSignatureException", "a request signed with the wrong secret",
                 forged.list_keys)
    expect_error("UnrecognizedClientException", "an access key this cluster never issued",
                 client_with(f"QK1X00AA00AA00AA00AA:{secret}").list_keys)
    expect_error("ExpiredTokenException", "an expired access key",
                 client_with(os.environ["QK_EXPIRED_KEY"]).list_keys)
    expect_error("UnrecognizedClientException", "a revoked access key",
                 client_with(os.environ["QK_REVOKED_KEY"]).list_keys)
    expect_error("UnrecognizedClientException", "the access key at another node",
                 client_with(f"{access}:{secret}", os.environ["QK_OTHER_NODE_URL"]).list_keys)
    reader = client_with(os.environ["QK_READER_KEY"])
    expect_error("AccessDeniedException", "Decrypt by a principal without data rights",
                 reader.decrypt, CiphertextBlob=k["blob"], EncryptionContext=k["ctx"])


def approvals(kms) -> None:
    blob = kms.encrypt(KeyId="alias/gated", Plaintext=b"break glass")["CiphertextBlob"]
    try:
        kms.decrypt(CiphertextBlob=blob)
        fail("a decrypt under an approval rule was answered without approval")
    except botocore.exceptions.ClientError as e:
        message = e.response["Error"]["Message"]
        check(e.response["Error"]["Code"] == "AccessDeniedException",
              "a decrypt under an approval rule waits for approval", message)
    approval = re.search(r"approval (\S+) is pending", message).group(1)
    subprocess.run(
        [os.environ["QK_BIN"], "--token", os.environ["QK_APPROVER_TOKEN"], "approval", "approve",
         approval],
        cwd=os.environ["QK_CWD"], check=True, capture_output=True,
    )
    plain = kms.decrypt(CiphertextBlob=blob, GrantTokens=[approval])["Plaintext"]
    check(plain == b"break glass", "once approved, the approval id as grant token decrypts")
    expect_error("AccessDeniedException", "an approval used a second time",
                 kms.decrypt, CiphertextBlob=blob, GrantTokens=[approval])


def encryption_sdk(k: dict) -> None:
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(key_ids=[k["arn"]])
    message = os.urandom(1024 * 1024)
    context = {"purpose": "backup"}
    started = time.time()
    sealed, header = client.encrypt(source=message, key_provider=provider, encryption_context=context)
    opened, dheader = client.decrypt(source=sealed, key_provider=provider)
    check(opened == message and dheader.encryption_context["purpose"] == "backup",
          f"AWS Encryption SDK: 1 MiB round trip, uncached ({time.time() - started:.2f} s)")
    cache = aws_encryption_sdk.LocalCryptoMaterialsCache(capacity=10)
    cmm = aws_encryption_sdk.CachingCryptoMaterialsManager(
        master_key_provider=provider, cache=cache, max_age=600.0, max_messages_encrypted=10
    )
    started = time.time()
    sealed = [client.encrypt(source=message, materials_manager=cmm)[0] for _ in range(3)]
    for s in sealed:
        check(client.decrypt(source=s, materials_manager=cmm)[0] == message,
              "AWS Encryption SDK: 1 MiB round trip through a caching materials manager")
    print(f"      3 cached round trips in {time.time() - started:.2f} s", flush=True)


def main() -> None:
    kms = boto3.client("kms")
    k = keys_and_data(kms)
    aliases(kms, k)
    rotation(kms, k)
    lifecycle(kms, k)
    refusals(kms, k)
    approvals(kms)
    encryption_sdk(k)
    print("ALL CHECKS PASSED", flush=True)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception:  # an unexpected error is a failed check, with its trace
        traceback.print_exc()
        fail("unexpected exception")
