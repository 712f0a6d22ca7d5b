"""tradetrace.report"""
