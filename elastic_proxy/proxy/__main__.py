from elastic_proxy.proxy.app import main

main()
