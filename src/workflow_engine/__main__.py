from workflow_engine.cli import main

main()
