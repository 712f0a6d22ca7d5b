"""tradetrace.events"""
