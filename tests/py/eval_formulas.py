"""Evaluates formulas exactly as the predecessor did: Python's eval of the formula string over the
sums, with builtins restricted to abs, min, max, round, int and float.

One JSON case per line on stdin: {"formula": "...", "vars": {"name": {"int": "<hex>"} or
{"float": "<IEEE bits, decimal>"}}}. One JSON answer per line on stdout: {"int": "<hex>"},
{"float": "<IEEE bits, decimal>"}, {"other": "<type name>"} or {"error": "<exception name>"}, and
for a number the quantity the predecessor sent for it, "sent": "<hex>" (its `str(int(float(v)))`),
or null when it sent nothing for the contract (a negative value, or `int()`/`float()` raised).
Ints travel in hex (no digit limit), floats as their bits (exact, signed zeros and NaNs kept).
"""
import json
import struct
import sys
import warnings

BUILTINS = {'abs': abs, 'min': min, 'max': max, 'round': round, 'int': int, 'float': float}


def decode(value):
    if 'int' in value:
        return int(value['int'], 16)
    return struct.unpack('<d', int(value['float']).to_bytes(8, 'little'))[0]


def encode(result):
    if type(result) is int:
        return {'int': hex(result)}
    if type(result) is float:
        return {'float': str(struct.unpack('<Q', struct.pack('<d', result))[0])}
    return {'other': type(result).__name__}


def sent(result):
    """What the predecessor's metering_processor.py sent for a formula's value, or None."""
    if not isinstance(result, (int, float)) or result < 0:
        return None
    try:
        return hex(int(float(result)))
    except (OverflowError, ValueError):
        return None


def main():
    # Syntax warnings (e.g. "'int' object is not callable") are not the formula's outcome.
    warnings.simplefilter('ignore')
    for line in sys.stdin:
        case = json.loads(line)
        context = {name: decode(v) for name, v in case['vars'].items()}
        context['__builtins__'] = BUILTINS
        try:
            result = eval(case['formula'], context)
            answer = encode(result)
            if 'other' not in answer:
                answer['sent'] = sent(result)
        except Exception as e:  # the predecessor caught every exception the same way
            answer = {'error': type(e).__name__}
        sys.stdout.write(json.dumps(answer) + '\n')


main()
