"""What the write side does outside requests, in the `segments` and `ingest` processes
(`customers serve segments|ingest`): keeping dynamic segments' membership current as customers
change (membership), running calculation, import and bulk jobs (engine, calculation), recording
who changed what for the compliance trail (attribution), erasing customers once their grace
period ends (erasure), and taking tracked activity from NATS (ingest)."""
