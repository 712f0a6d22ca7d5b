"""tradetrace.mining"""
