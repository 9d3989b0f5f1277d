"""Files users give the hub and files their jobs leave: safe extraction, safe walking, bounded reads.

Pure filesystem code: imports nothing of LabHub's.
"""
