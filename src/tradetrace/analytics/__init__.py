"""tradetrace.analytics"""
