"""The one image decoder used for training, for the folder file check, for prediction and for the
exported `serving_bytes` signature: what passes the check is exactly what training can read, and
a photo is turned upright (EXIF orientation) the same way when training and when serving.

Graph-only TensorFlow ops (no py_function), so it runs in tf.data and serialises into a
SavedModel.
"""

from __future__ import annotations

import tensorflow as tf

# What tf.io.decode_image reads. TIFF and HEIC (common camera/phone formats) are not among them.
SUPPORTED_FORMATS = "JPEG, PNG, GIF, BMP or WebP"
# Bumped whenever decode_image changes what it accepts: cached file verdicts of older versions
# are then ignored (see efficientnet_tf.data).
DECODER_VERSION = 1

_EXIF_ORIENTATION_TAG = 0x0112
_TIFF_SHORT, _TIFF_LONG = 3, 4
# The Exif APP1 segment comes right after SOI (or after a JFIF APP0) by the standard; bounding the
# marker walk keeps a malformed file from looping long.
_MAX_JPEG_SEGMENTS = 64
_MAX_IFD_ENTRIES = 512


def _bytes_at(data, position, count):
    """uint8 [count] from `data` at `position`, zero-padded past the end (never out of range)."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    position = tf.clip_by_value(tf.cast(position, tf.int64), 0, length)
    count = tf.cast(count, tf.int64)
    raw = tf.io.decode_raw(tf.strings.substr(data, position, count), tf.uint8)
    return tf.pad(raw, [[0, count - tf.shape(raw, out_type=tf.int64)[0]]])


def _exif_tiff_offset(data):
    """Position of the TIFF header inside a JPEG's Exif APP1 segment, or -1 when there is none."""
    length = tf.cast(tf.strings.length(data), tf.int64)
    exif_id = tf.constant([0x45, 0x78, 0x69, 0x66, 0, 0], tf.int64)  # "Exif\0\0"

    def walk(position, found, steps):
        head = tf.cast(_bytes_at(data, position, 10), tf.int64)
        is_marker = tf.equal(head[0], 0xFF)
        kind = head[1]
        segment_length = head[2] * 256 + head[3]
        is_exif = is_marker & tf.equal(kind, 0xE1) & tf.reduce_all(tf.equal(head[4:10], exif_id))
        found = tf.where(is_exif, position + 10, found)
        padding = is_marker & tf.equal(kind, 0xFF)  # fill bytes before a marker
        # Start of scan / end of image / not a marker: no metadata segment follows.
        stop = ~is_marker | tf.equal(kind, 0xDA) | tf.equal(kind, 0xD9) | (segment_length < 2)
        next_position = tf.where(padding, position + 1, tf.where(stop, length, position + 2 + segment_length))
        return next_position, found, steps + 1

    def keep_walking(position, found, steps):
        return (found < 0) & (position + 4 <= length) & (steps < _MAX_JPEG_SEGMENTS)

    start = _bytes_at(data, 0, 2)
    is_jpeg = tf.equal(start[0], 0xFF) & tf.equal(start[1], 0xD8)
    _, found, _ = tf.while_loop(keep_walking, walk, [tf.constant(2, tf.int64), tf.constant(-1, tf.int64),
                                                      tf.constant(0)])
    return tf.where(is_jpeg, found, tf.constant(-1, tf.int64))


def exif_orientation(data) -> tf.Tensor:
    """The EXIF orientation (int32, 1..8) of JPEG bytes; 1 (upright) when absent, invalid or not a JPEG.

    Reads IFD0 of the APP1 Exif segment in either byte order ("II" little-endian, "MM" big-endian).
    """
    data = tf.convert_to_tensor(data, tf.string)
    tiff = _exif_tiff_offset(data)

    def parse():
        head = tf.cast(_bytes_at(data, tiff, 8), tf.int64)
        little = tf.equal(head[0], 0x49) & tf.equal(head[1], 0x49)
        big = tf.equal(head[0], 0x4D) & tf.equal(head[1], 0x4D)

        def u16(b0, b1):
            return tf.where(little, b0 + b1 * 256, b0 * 256 + b1)

        def u32(b0, b1, b2, b3):
            return tf.where(little, b0 + b1 * 2**8 + b2 * 2**16 + b3 * 2**24, b0 * 2**24 + b1 * 2**16 + b2 * 2**8 + b3)

        ifd = tiff + u32(head[4], head[5], head[6], head[7])
        count_bytes = tf.cast(_bytes_at(data, ifd, 2), tf.int64)
        count = tf.clip_by_value(u16(count_bytes[0], count_bytes[1]), 0, _MAX_IFD_ENTRIES)
        entries = tf.reshape(tf.cast(_bytes_at(data, ifd + 2, 12 * count), tf.int64), [-1, 12])
        tags = u16(entries[:, 0], entries[:, 1])
        types = u16(entries[:, 2], entries[:, 3])
        values = tf.where(tf.equal(types, _TIFF_LONG),
                          u32(entries[:, 8], entries[:, 9], entries[:, 10], entries[:, 11]),
                          u16(entries[:, 8], entries[:, 9]))
        matches = tf.equal(tags, _EXIF_ORIENTATION_TAG) & (tf.equal(types, _TIFF_SHORT) | tf.equal(types, _TIFF_LONG))
        value = tf.concat([tf.boolean_mask(values, matches), tf.constant([1], tf.int64)], 0)[0]  # first match
        valid = (little | big) & (value >= 1) & (value <= 8)
        return tf.cast(tf.where(valid, value, 1), tf.int32)

    return tf.cond(tiff >= 0, parse, lambda: tf.constant(1, tf.int32))


def apply_orientation(image, orientation) -> tf.Tensor:
    """Turn an image [H, W, C] upright for EXIF orientation 1..8, as PIL's ImageOps.exif_transpose does."""
    branches = [
        lambda: image,                                           # 1: upright
        lambda: image[:, ::-1],                                  # 2: mirrored left-right
        lambda: image[::-1, ::-1],                               # 3: rotated 180
        lambda: image[::-1],                                     # 4: mirrored top-bottom
        lambda: tf.transpose(image, [1, 0, 2]),                  # 5: transposed
        lambda: tf.image.rot90(image, k=3),                      # 6: needs 90 degrees clockwise
        lambda: tf.transpose(image[::-1, ::-1], [1, 0, 2]),      # 7: transversed
        lambda: tf.image.rot90(image, k=1),                      # 8: needs 90 degrees counter-clockwise
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.switch_case(index, branches)


def decode_image(data) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes (tf.string scalar) -> uint8 RGB [H, W, 3], upright.

    Grey and RGBA images become RGB, a GIF gives its first frame, and a JPEG's EXIF orientation
    is applied (phone photos are stored sideways with a tag saying so). An unsupported or
    corrupt file raises tf.errors.InvalidArgumentError.
    """
    data = tf.convert_to_tensor(data, tf.string)
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    image = apply_orientation(image, exif_orientation(data))
    return tf.ensure_shape(image, [None, None, 3])


def read_image(path) -> tf.Tensor:
    """decode_image of the file at `path` (tf.string scalar): for tf.data pipelines."""
    return decode_image(tf.io.read_file(path))


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _decode_shape(data):
    # One graph call per file: the file check runs from a thread pool, and TF releases the GIL
    # while the graph runs, so several files decode at once.
    return tf.shape(decode_image(data))


def check_image_bytes(data: bytes) -> str | None:
    """None when decode_image reads `data`, else why not (one line)."""
    try:
        _decode_shape(tf.constant(data))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.ResourceExhaustedError,
            tf.errors.DataLossError) as err:
        return _reason(err)
    return None


def _reason(err: tf.errors.OpError) -> str:
    """The line of a TF error a person can act on, without the graph trace around it."""
    lines = [line.strip() for line in (err.message or "").splitlines()]
    lines = [line for line in lines if line and not line.startswith(("File ", "Detected at node", "Graph execution",
                                                                     "[[", "{{"))]
    reason = lines[-1].split(" [Op:")[0].strip() if lines else type(err).__name__
    if reason.startswith("Unknown image file format"):
        return "unknown image format (TIFF, HEIC and others: convert to JPEG or PNG first)"
    return reason


def check_image_file(path: str) -> str | None:
    """None when training can decode the file at `path`, else the reason (one line)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        return f"cannot open: {err.strerror or err}"
    if not data:
        return "empty file"
    return check_image_bytes(data)
