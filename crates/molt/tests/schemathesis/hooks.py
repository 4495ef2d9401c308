"""schemathesis hooks for molt's API: how to send the bodies a JSON schema cannot describe.

An `application/x-tar` body is generated as bytes and sent as a real tar archive holding
those bytes as one file, so an import can succeed (and the operations linked from it can
reach a real image); the server's own archive checks are tested in molt-image. No bytes stay
no body at all (the schema's minLength), which the server must refuse.
"""

import io
import tarfile

import schemathesis


@schemathesis.serializer("application/x-tar")
def tar_serializer(ctx, value):
    if isinstance(value, str):
        value = value.encode("utf-8")
    if not isinstance(value, (bytes, bytearray)):
        value = bytes(str(value), "utf-8")
    if len(value) == 0:
        return b""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        member = tarfile.TarInfo("generated.bin")
        member.size = len(value)
        member.mode = 0o644
        archive.addfile(member, io.BytesIO(bytes(value)))
    return out.getvalue()


# Counts that are valid but large (up to 1000 instances) would start that many processes on the
# test machine: a valid count above 3 is sent as 3, so valid stays valid and invalid stays
# invalid (negative numbers, above 1000, min above max). Scaling to 1000 is tested where it is
# measured (bench scale), not here.
SCALE_CAP = 3


@schemathesis.hook
def map_case(ctx, case):
    if case.operation.path == "/v1/apps/{app}/scale" and isinstance(case.body, dict):
        for key in ("instances", "min", "max"):
            value = case.body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and SCALE_CAP < value <= 1000:
                case.body[key] = SCALE_CAP
    return case
