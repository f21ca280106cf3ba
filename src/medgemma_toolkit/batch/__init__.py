"""`medgemma batch`: plain batch inference (no scoring) over a row file, on eval's resumable generation loop."""
